from django.apps import AppConfig


class AgentSessionsConfig(AppConfig):
    # `sessions` is taken by django.contrib.sessions, so our app is known as agent_sessions.
    name = "sessions"
    label = "agent_sessions"
    verbose_name = "Agent sessions"
    default_auto_field = "django.db.models.BigAutoField"
