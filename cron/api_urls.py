from rest_framework.routers import SimpleRouter

from cron.api import CronJobViewSet

router = SimpleRouter()
router.register("jobs", CronJobViewSet, basename="cron-job")

urlpatterns = router.urls
