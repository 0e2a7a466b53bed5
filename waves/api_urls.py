from rest_framework.routers import SimpleRouter

from waves.api import TaskListViewSet

router = SimpleRouter()
router.register("task-lists", TaskListViewSet, basename="task-list")
urlpatterns = router.urls
