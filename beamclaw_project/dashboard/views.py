"""The dashboard's pages and the forms they post: thin edges over the selectors and the services.

Every view is for staff only (access.py). Writes go through the same services the REST and WebSocket
edges call (run_abort, run_submit, session_create, approval_resolve, the cron services), so the dashboard
can do nothing an operator could not do there, and its decisions are recorded as `dashboard:<username>`.
A form posted by the page's script (Accept: application/json) gets JSON back; a plain form post is
redirected back to its page with a message, the Post/Redirect/Get pattern.
"""


from django.contrib import messages
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from beamclaw_project.dashboard import present, selectors
from beamclaw_project.dashboard.access import staff_required, tenant_filter
from beamclaw_project.errors import Conflict, DomainError, InvalidInput
from beamclaw_project.infra.outages import outage_of
from cron.services import cron_job_run_now, cron_job_set_enabled
from sessions import events
from sessions.content import content_parse
from sessions.models import AgentSession, Run
from sessions.runs import run_abort, run_submit
from sessions.services import session_create
from tools.services import approval_resolve

DECISIONS = {"allow": ("allow", False), "always": ("allow", True), "deny": ("deny", False)}


def actor(request) -> str:
    """How the dashboard signs what a user did (approval decisions, abort reasons)."""
    return f"dashboard:{request.user.get_username()}"


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _back(request, fallback: str):
    """Where a form sends the user back to: its `next` field when that is a page of this site."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(target)
    return redirect(fallback)


def _refused(request, fallback: str, error: DomainError):
    if _wants_json(request):
        return JsonResponse({"error": error.message, "code": error.code}, status=error.status)
    messages.error(request, error.message)
    return _back(request, fallback)


def _get_or_404(found, what: str, ident):
    if found is None:
        raise Http404(f"No {what} {ident}.")
    return found


# --- runs -------------------------------------------------------------------------------------------------


@require_GET
@staff_required
def runs_page(request):
    tenant = tenant_filter(request)
    return render(request, "dashboard/runs.html", {
        "tenants": selectors.tenants_all(),
        "tenant": tenant,
        "live_runs": selectors.runs_live(tenant=tenant),
        "recent_runs": selectors.runs_recent_finished(tenant=tenant),
    })


def _stored_events(run: Run) -> tuple[list[events.RunEvent], str]:
    """A finished run's events from its stream (kept an hour), and a note when they cannot be shown."""
    try:
        stored = events.read_all(run.pk)
    except Exception as exc:
        if (store := outage_of(exc)) is None:
            raise
        return [], f"{store} is unavailable, so the run's events cannot be shown; its transcript is below."
    if not stored:
        return [], "The run's event stream has expired (streams are kept an hour); its transcript is below."
    return stored, ""


@require_GET
@staff_required
def run_page(request, run_id):
    run = _get_or_404(selectors.run_by_id(run_id=run_id), "run", run_id)
    stored, events_note = _stored_events(run) if run.is_terminal else ([], "")
    return render(request, "dashboard/run.html", {
        "run": run,
        "tool_calls": [
            {"call": call, "input": present.pretty(call.input),
             "output": present.pretty(call.output) if call.output is not None else "",
             "approval": getattr(call, "approval", None)}
            for call in selectors.run_tool_calls(run=run)
        ],
        "messages_shown": [
            {"message": m, "blocks": present.blocks_display(m.content)} for m in selectors.run_messages(run=run)
        ],
        "run_events": [present.event_display(e) for e in stored if e.event != events.TEXT_DELTA],
        "reply": present.reply_text(stored),
        "events_note": events_note,
        "decision_buttons": [("allow", "Approve"), ("deny", "Deny")],
    })


@require_POST
@staff_required
def run_abort_view(request, run_id):
    run = _get_or_404(selectors.run_by_id(run_id=run_id), "run", run_id)
    fallback = reverse("dashboard:run", args=[run.pk])
    if run.is_terminal:
        return _refused(request, fallback, Conflict(f"The run already ended ({run.status})."))
    run_abort(run=run, reason=f"aborted by {actor(request)}")
    if _wants_json(request):
        return JsonResponse({"run_id": str(run.pk)}, status=202)
    messages.success(request, "Abort requested: the run stops at its next event.")
    return _back(request, fallback)


# --- sessions ---------------------------------------------------------------------------------------------


def _page_number(request) -> int:
    raw = request.GET.get("page", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise Http404(f"No page '{raw}': pages are numbered from 1.")
    return int(raw)


@require_GET
@staff_required
def sessions_page(request):
    tenant = tenant_filter(request)
    page = _page_number(request)
    search = request.GET.get("q", "").strip()
    include_ephemeral = request.GET.get("ephemeral") == "1"
    rows, has_next = selectors.sessions_page(tenant=tenant, search=search, include_ephemeral=include_ephemeral, page=page)
    return render(request, "dashboard/sessions.html", {
        "tenants": selectors.tenants_all(),
        "tenant": tenant,
        "agents": selectors.agents_all(tenant=tenant),
        "sessions": rows,
        "search": search,
        "include_ephemeral": include_ephemeral,
        "page": page,
        "has_next": has_next,
    })


@require_POST
@staff_required
def session_new(request):
    fallback = reverse("dashboard:sessions")
    raw_agent = request.POST.get("agent", "")
    agent = selectors.agent_by_id(agent_id=int(raw_agent)) if raw_agent.isdigit() else None
    if agent is None:
        return _refused(request, fallback, InvalidInput("Choose the agent the new session talks to."))
    try:
        session = session_create(tenant=agent.tenant, agent=agent, key=request.POST.get("key", "").strip() or None)
    except DomainError as exc:
        return _refused(request, fallback, exc)
    return redirect("dashboard:session", session_id=session.pk)


@require_GET
@staff_required
def session_page(request, session_id):
    session = _get_or_404(selectors.session_by_id(session_id=session_id), "session", session_id)
    transcript, total = selectors.session_transcript(session=session)
    return render(request, "dashboard/session.html", {
        "session": session,
        "transcript": [{"message": m, "blocks": present.blocks_display(m.content)} for m in transcript],
        "total_messages": total,
        "open_run": selectors.session_open_run(session=session),
        "queue_modes": AgentSession.QueueMode.values,
    })


@require_POST
@staff_required
def session_send(request, session_id):
    session = _get_or_404(selectors.session_by_id(session_id=session_id), "session", session_id)
    fallback = reverse("dashboard:session", args=[session.pk])
    mode = request.POST.get("mode") or None
    try:
        if mode is not None and mode not in AgentSession.QueueMode.values:
            raise InvalidInput(f"mode must be one of {', '.join(AgentSession.QueueMode.values)}.")
        content = content_parse(request.POST.get("message", "").strip() or None, where="message")
        # The dashboard posts over HTTP like the REST API does; runs record it as an API turn.
        run = run_submit(session=session, content=content, trigger=Run.Trigger.API, mode=mode)
    except DomainError as exc:
        return _refused(request, fallback, exc)
    if _wants_json(request):
        return JsonResponse({"run_id": str(run.pk), "status": run.status,
                             "run_url": reverse("dashboard:run", args=[run.pk])}, status=202)
    messages.success(request, "Message sent.")
    return redirect(fallback)


# --- approvals --------------------------------------------------------------------------------------------


@require_GET
@staff_required
def approvals_page(request):
    tenant = tenant_filter(request)
    context = {
        "tenants": selectors.tenants_all(),
        "tenant": tenant,
        "pending": [{"approval": a, **present.approval_display(a)} for a in selectors.approvals_pending(tenant=tenant)],
        "decided": selectors.approvals_decided(tenant=tenant),
    }
    # The page refreshes its pending list in place (htmx) while it is open.
    template = "dashboard/_approvals_pending.html" if request.headers.get("HX-Request") else "dashboard/approvals.html"
    return render(request, template, context)


@require_POST
@staff_required
def approval_decide(request, approval_id):
    approval = _get_or_404(selectors.approval_by_id(approval_id=approval_id), "approval", approval_id)
    fallback = reverse("dashboard:approvals")
    choice = DECISIONS.get(request.POST.get("decision", ""))
    if choice is None:
        return _refused(request, fallback, InvalidInput("decision must be one of allow, always or deny."))
    decision, always = choice
    try:
        approval_resolve(approval_id=approval.pk, tenant=approval.tenant, decision=decision, always=always,
                         decided_by=actor(request))
    except DomainError as exc:
        return _refused(request, fallback, exc)
    verb = {"allow": "Allowed", "always": "Allowed (always)", "deny": "Denied"}[request.POST["decision"]]
    messages.success(request, f"{verb}: {approval.tool} {approval.subject[:80]}")
    return _back(request, fallback)


# --- cron -------------------------------------------------------------------------------------------------


@require_GET
@staff_required
def cron_page(request):
    tenant = tenant_filter(request)
    jobs = selectors.cron_jobs(tenant=tenant)
    return render(request, "dashboard/cron.html", {
        "tenants": selectors.tenants_all(),
        "tenant": tenant,
        "jobs": [{"job": job, "schedule": present.schedule_display(job)} for job in jobs],
    })


@require_GET
@staff_required
def cron_job_page(request, job_id):
    job = _get_or_404(selectors.cron_job_by_id(job_id=job_id), "cron job", job_id)
    return render(request, "dashboard/cron_job.html", {
        "job": job,
        "schedule": present.schedule_display(job),
        "history": selectors.cron_job_history(job=job),
    })


@require_POST
@staff_required
def cron_job_run(request, job_id):
    job = _get_or_404(selectors.cron_job_by_id(job_id=job_id), "cron job", job_id)
    fallback = reverse("dashboard:cron_job", args=[job.pk])
    try:
        cron_run = cron_job_run_now(job=job)
    except DomainError as exc:
        return _refused(request, fallback, exc)
    messages.success(request, f"Started a run of “{job.name}” ({cron_run.status}).")
    return redirect(fallback)


@require_POST
@staff_required
def cron_job_enabled(request, job_id):
    job = _get_or_404(selectors.cron_job_by_id(job_id=job_id), "cron job", job_id)
    fallback = reverse("dashboard:cron_job", args=[job.pk])
    raw = request.POST.get("enabled", "")
    if raw not in ("0", "1"):
        return _refused(request, fallback, InvalidInput("enabled must be 1 (enable) or 0 (disable)."))
    try:
        job = cron_job_set_enabled(job=job, enabled=raw == "1")
    except DomainError as exc:
        return _refused(request, fallback, exc)
    messages.success(request, f"“{job.name}” is {'enabled' if job.enabled else 'disabled'}.")
    return redirect(fallback)
