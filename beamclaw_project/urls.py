from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt

from beamclaw_project.health import health
from beamclaw_project.metrics import metrics
from channels_app.hooks import webhook_receive
from sessions import openai_api, responses_api


@csrf_exempt
async def openai_not_found(request, rest=""):
    """Any other /v1/ path: OpenAI clients parse errors in OpenAI's shape, not Django's HTML 404 page."""
    return openai_api.openai_error(
        404,
        f"Invalid URL ({request.method} {request.path}): this gateway serves GET /v1/models, "
        "GET /v1/models/{model}, POST /v1/chat/completions, POST /v1/responses and GET /v1/responses/{id}.",
        code="unknown_url",
    )


urlpatterns = [
    path("health", health, name="health"),
    path("metrics", metrics, name="metrics"),
    path("v1/models", openai_api.list_models, name="openai-models"),
    path("v1/models/<str:model_id>", openai_api.retrieve_model, name="openai-model"),
    path("v1/chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("v1/responses", responses_api.create_response, name="openai-responses"),
    path("v1/responses/<str:response_id_value>", responses_api.retrieve_response, name="openai-response"),
    re_path(r"^v1(?:/(?P<rest>.*))?$", openai_not_found, name="openai-not-found"),
    path("api/", include("beamclaw_project.api_urls")),
    path("hooks/<int:account_id>", webhook_receive, name="channel-webhook"),
    path("admin/", admin.site.urls),
    path("", include("beamclaw_project.dashboard.urls")),
]
