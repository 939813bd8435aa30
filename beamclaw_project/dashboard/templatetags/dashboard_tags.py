"""Template filters of the dashboard."""

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def ago(moment: datetime | None) -> str:
    """"under a minute ago", "5 min ago", "2 h 5 min ago", then the date: minute steps, so the live
    runs table (re-sent only when its HTML changes) is not re-sent every second for its clock alone."""
    if moment is None:
        return ""
    minutes = int((timezone.now() - moment).total_seconds() // 60)
    if minutes < 1:
        return "under a minute ago"
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 24 * 60:
        return f"{minutes // 60} h {minutes % 60} min ago"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M")
