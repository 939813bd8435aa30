from django.contrib import admin
from django.urls import include, path

from beamclaw_project.health import health
from sessions import openai_api

urlpatterns = [
    path("health", health, name="health"),
    path("v1/models", openai_api.list_models, name="openai-models"),
    path("v1/models/<str:model_id>", openai_api.retrieve_model, name="openai-model"),
    path("v1/chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("api/", include("beamclaw_project.api_urls")),
    path("admin/", admin.site.urls),
]
