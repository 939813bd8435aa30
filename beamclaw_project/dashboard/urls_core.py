"""The dashboard's core pages: runs, sessions, approvals, cron, and logging in and out."""

from django.contrib.auth import views as auth_views
from django.urls import path

from beamclaw_project.dashboard import views
from beamclaw_project.dashboard.access import StaffLoginForm

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="dashboard/login.html", authentication_form=StaffLoginForm, redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("", views.runs_page, name="runs"),
    path("runs/<uuid:run_id>/", views.run_page, name="run"),
    path("runs/<uuid:run_id>/abort/", views.run_abort_view, name="run_abort"),
    path("sessions/", views.sessions_page, name="sessions"),
    path("sessions/new/", views.session_new, name="session_new"),
    path("sessions/<uuid:session_id>/", views.session_page, name="session"),
    path("sessions/<uuid:session_id>/send/", views.session_send, name="session_send"),
    path("approvals/", views.approvals_page, name="approvals"),
    path("approvals/<uuid:approval_id>/decide/", views.approval_decide, name="approval_decide"),
    path("cron/", views.cron_page, name="cron"),
    path("cron/<int:job_id>/", views.cron_job_page, name="cron_job"),
    path("cron/<int:job_id>/run/", views.cron_job_run, name="cron_job_run"),
    path("cron/<int:job_id>/enabled/", views.cron_job_enabled, name="cron_job_enabled"),
]
