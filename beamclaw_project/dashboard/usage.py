"""The usage page: per tenant, tokens per day, runs per minute and failures, as bar charts drawn on the
server in inline SVG (no chart library, nothing fetched from elsewhere). Every bar carries its figures
as a <title>, every chart a text summary, and the daily figures are in a table too, so the numbers are
there for screen readers, keyboard users and copy-paste alike.

The figures come from sessions/usage.py in a fixed number of queries, whatever the number of tenants.
"""

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from beamclaw_project.dashboard import selectors
from beamclaw_project.dashboard.access import staff_required, tenant_filter
from sessions.usage import USAGE_DAYS, USAGE_MINUTES, TenantUsage, tenant_usage_list

PLOT_HEIGHT = 120
TOP = 4  # room above the tallest bar
AXIS = 18  # room below the bars for their labels
COLORS = {"input": "#1f5fbf", "output": "#7fa7e0", "runs": "#1d7a3a", "failed": "#b3261e", "aborted": "#6d4c9f"}


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    color: str


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    segments: list[Segment]
    title: str  # the bar's figures, as text
    label: str  # under the bar; empty where labels would crowd


@dataclass(frozen=True)
class Chart:
    title: str
    summary: str
    width: int
    height: int
    bars: list[Bar]
    peak: int
    legend: list[tuple[str, str]]  # (series, color)
    top: int = TOP
    plot_height: int = PLOT_HEIGHT
    baseline: int = TOP + PLOT_HEIGHT
    label_y: int = TOP + PLOT_HEIGHT + 14


def bar_chart(*, title: str, summary: str, columns: list[tuple[str, str, list[tuple[str, int]]]],
              step: int, label_every: int) -> Chart:
    """Stacked bars, one per column (label, title, [(series, value), ...]), bottom series first, scaled so
    the tallest column fills the plot; every `label_every`-th column is labelled, counting back from the
    newest, which always is."""
    peak = max((sum(value for _, value in series) for _, _, series in columns), default=0)
    scale = PLOT_HEIGHT / peak if peak else 0
    bars = []
    for index, (label, bar_title, series) in enumerate(columns):
        base = TOP + PLOT_HEIGHT
        segments = []
        for name, value in series:
            height = value * scale
            base -= height
            if value:
                segments.append(Segment(y=round(base, 2), height=round(height, 2), color=COLORS[name]))
        bars.append(Bar(x=index * step + 1, width=step - 2, segments=segments, title=bar_title,
                        label=label if (len(columns) - 1 - index) % label_every == 0 else ""))
    legend = [(name, COLORS[name]) for name, _ in columns[0][2]] if columns else []
    return Chart(title=title, summary=summary, width=len(columns) * step, height=TOP + PLOT_HEIGHT + AXIS,
                 bars=bars, peak=peak, legend=legend)


def usage_charts(usage: TenantUsage) -> list[Chart]:
    tokens = bar_chart(
        title=f"Tokens per day, last {USAGE_DAYS} days (UTC)",
        summary=f"{usage.input_tokens} input and {usage.output_tokens} output tokens in {usage.runs} runs.",
        columns=[
            (f"{day.day:%m-%d}", f"{day.day}: {day.input_tokens} input, {day.output_tokens} output tokens",
             [("input", day.input_tokens), ("output", day.output_tokens)])
            for day in usage.days
        ],
        step=40, label_every=2,
    )
    busiest = max(usage.minutes, key=lambda minute: minute.runs)
    runs = bar_chart(
        title=f"Runs started per minute, last {USAGE_MINUTES} minutes (UTC)",
        summary=(f"{usage.runs_last_hour} runs, at most {busiest.runs} in one minute ({busiest.minute:%H:%M})."
                 if busiest.runs else "No runs started."),
        columns=[
            (f"{minute.minute:%H:%M}", f"{minute.minute:%H:%M}: {minute.runs} runs", [("runs", minute.runs)])
            for minute in usage.minutes
        ],
        step=10, label_every=10,
    )
    failures = bar_chart(
        title=f"Failed and aborted runs per day, last {USAGE_DAYS} days (UTC)",
        summary=f"{usage.failed} of {usage.runs} runs failed or were aborted.",
        columns=[
            (f"{day.day:%m-%d}", f"{day.day}: {day.failed} failed, {day.aborted} aborted",
             [("failed", day.failed), ("aborted", day.aborted)])
            for day in usage.days
        ],
        step=40, label_every=2,
    )
    return [tokens, runs, failures]


@staff_required
def usage(request: HttpRequest) -> HttpResponse:
    tenant = tenant_filter(request)
    everyone = selectors.tenants_all()
    figures = tenant_usage_list(tenants=[tenant] if tenant else everyone)
    # The minute window lies inside the day window, so a tenant with no run in the days has none at all.
    busy = [(figure, usage_charts(figure)) for figure in figures if figure.runs]
    idle = [figure.tenant for figure in figures if not figure.runs]
    return render(request, "dashboard/usage.html", {
        "tenants": everyone, "tenant": tenant, "busy": busy, "idle": idle,
        "days": USAGE_DAYS,
    })
