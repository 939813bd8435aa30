from django.urls import path
from rest_framework.routers import SimpleRouter

from sessions.api import RunViewSet, SessionViewSet
from sessions.sse import run_events

router = SimpleRouter()
router.register("sessions", SessionViewSet, basename="session")
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("runs/<uuid:run_id>/events/", run_events, name="run-events"),
    *router.urls,
]
