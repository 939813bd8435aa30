/* The dashboard's live parts, over one WebSocket per page (/ws/dashboard/, see consumers.py).
   Pages work without this script (plain forms, reload to refresh); the script keeps them current. */
(function () {
  "use strict";

  /* A socket that reconnects after a drop and replays its requests (`hello` builds them anew). */
  function connect(hello, onFrame, onState) {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = null, retry = 1000;
    function open() {
      socket = new WebSocket(scheme + location.host + "/ws/dashboard/");
      socket.onopen = function () {
        retry = 1000;
        onState(true);
        hello().forEach(function (frame) { socket.send(JSON.stringify(frame)); });
      };
      socket.onmessage = function (message) { onFrame(JSON.parse(message.data)); };
      socket.onclose = function () {
        onState(false);
        setTimeout(open, retry);
        retry = Math.min(retry * 2, 15000);
      };
    }
    open();
    return { send: function (frame) { if (socket && socket.readyState === 1) socket.send(JSON.stringify(frame)); } };
  }

  function liveDot(on) {
    var dot = document.getElementById("live-dot");
    if (dot) dot.classList.toggle("on", on);
    var state = document.getElementById("live-state");
    if (state) state.textContent = on ? "" : "(reconnecting…)";
  }

  /* Re-render one region of the current page from the server (after tool calls, approvals, the end).
     Every call fetches (none is dropped while another is in flight), and only the newest answer is used.
     A region that has not changed is left in place: swapped for its copy under a click (a tool call and its
     approval request come as two events, so two refreshes), the click's button is gone and the click lost. */
  var refreshes = {};
  function refresh(selector) {
    var ticket = (refreshes[selector] || 0) + 1;
    refreshes[selector] = ticket;
    fetch(location.pathname + location.search, { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(selector);
        var current = document.querySelector(selector);
        if (ticket === refreshes[selector] && fresh && current && markup(fresh) !== markup(current)) {
          current.replaceWith(document.importNode(fresh, true));
        }
      });
  }

  /* A region's markup, but for its forms' CSRF tokens, which differ in every answer. */
  function markup(region) {
    var copy = region.cloneNode(true);
    copy.querySelectorAll("input[name=csrfmiddlewaretoken]").forEach(function (input) { input.removeAttribute("value"); });
    return copy.outerHTML;
  }

  var TERMINAL = { "run.completed": 1, "run.failed": 1, "run.aborted": 1 };
  var CHANGES = { "tool.call": 1, "tool.result": 1, "approval.requested": 1, "approval.resolved": 1 };

  /* Shows one run's events: deltas append to #reply (a blank line between steps), the rest list in #events. */
  function RunView() {
    this.lastSeq = 0;
    this.step = null;
  }
  RunView.prototype.show = function (frame) {
    if (frame.seq <= this.lastSeq) return;
    this.lastSeq = frame.seq;
    if (frame.event === "text.delta") {
      var reply = document.getElementById("reply");
      if (this.step !== null && frame.step !== this.step) reply.textContent += "\n\n";
      this.step = frame.step;
      reply.textContent += frame.text;
    } else {
      document.getElementById("events").insertAdjacentHTML("beforeend", frame.html);
    }
  };

  window.BeamDash = {
    watchRuns: function () {
      var box = document.getElementById("live-runs");
      function shown() {
        return Array.prototype.map.call(box.querySelectorAll("tr[data-run]"), function (row) { return row.dataset.run; });
      }
      connect(function () {
        return [{ watch: "runs", tenant: box.dataset.tenant || "", shown: shown() }];
      }, function (frame) {
        if (frame.type === "runs") {
          box.innerHTML = frame.html;
        } else if (frame.type === "finished") {
          var recent = document.getElementById("recent-runs");
          var placeholder = recent.querySelector("tr.placeholder");
          if (placeholder) placeholder.remove();
          recent.insertAdjacentHTML("afterbegin", frame.html);
        }
      }, liveDot);
    },

    followRun: function (options) {
      var view = new RunView();
      connect(function () {
        return [{ follow: options.runId, after: view.lastSeq }];
      }, function (frame) {
        if (frame.type !== "event") return;
        view.show(frame);
        if (CHANGES[frame.event] || TERMINAL[frame.event]) refresh(options.refresh);
        if (TERMINAL[frame.event]) liveDot(false);
      }, liveDot);
    },

    chat: function (options) {
      var form = document.querySelector(options.form);
      var box = document.getElementById("live-reply-box");
      var status = document.getElementById("chat-status");
      var view = null, runId = null;
      var socket = connect(function () {
        return runId ? [{ follow: runId, after: view.lastSeq }] : [];
      }, function (frame) {
        if (frame.type === "error") { status.textContent = frame.message; return; }
        if (frame.type !== "event" || frame.run_id !== runId) return;
        view.show(frame);
        if (TERMINAL[frame.event]) {
          status.textContent = frame.event === "run.completed" ? "" : frame.event.replace("run.", "Run ");
          runId = null;
          box.hidden = true;
          refresh(options.refresh);
        }
      }, liveDot);

      function follow(id) {
        runId = id;
        view = new RunView();
        document.getElementById("reply").textContent = "";
        document.getElementById("events").innerHTML = "";
        var label = document.getElementById("live-run-label");
        label.innerHTML = "";
        var link = document.createElement("a");
        link.href = options.runUrl.replace("00000000-0000-0000-0000-000000000000", id);
        link.textContent = "reply (run " + id.slice(0, 8) + ")";
        label.appendChild(link);
        box.hidden = false;
        socket.send({ follow: id, after: 0 });
      }

      if (options.openRun) follow(options.openRun);
      if (!form) return;
      var textarea = form.querySelector("textarea");
      textarea.addEventListener("keydown", function (event) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); form.requestSubmit(); }
      });
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var button = form.querySelector("button[type=submit]");
        button.disabled = true;
        status.textContent = "Sending…";
        fetch(form.action, { method: "POST", body: new FormData(form), headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (response) { return response.json().then(function (body) { return { ok: response.ok, body: body }; }); })
          .then(function (result) {
            if (!result.ok) { status.textContent = result.body.error || "Not sent."; return; }
            status.textContent = "";
            textarea.value = "";
            refresh(options.refresh);
            follow(result.body.run_id);
          })
          .catch(function () { status.textContent = "Not sent: the server could not be reached."; })
          .then(function () { button.disabled = false; textarea.focus(); });
      });
    }
  };
})();
