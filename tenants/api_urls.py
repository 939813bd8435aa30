from rest_framework.routers import SimpleRouter

from tenants.api import AgentViewSet, ApiKeyViewSet

router = SimpleRouter()
router.register("agents", AgentViewSet, basename="agent")
router.register("keys", ApiKeyViewSet, basename="apikey")
urlpatterns = router.urls
