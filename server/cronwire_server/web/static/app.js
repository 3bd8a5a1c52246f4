// cronwire dashboard: keeps the page live from the server's event stream (server-sent events).
// The server renders every page; this script only fetches the page's main part again when an
// event concerns it, appends a running execution's output, and adds rows to the event feed.
// It never turns received text into markup: new text goes in with textContent.
(function () {
  "use strict";

  var page = document.body.getAttribute("data-page");
  var live = document.getElementById("live");
  var main = document.getElementById("main");
  // Lists read more than one resource's pages: they are redrawn less often under a busy stream.
  var REFRESH_GAP_MS = (page === "overview" || page === "jobs") ? 3000 : 750;
  var MAX_FEED_ROWS = 200;
  var lastRefresh = 0;
  var refreshTimer = null;
  var output = null;
  var outputOffset = -1;
  var holding = false;  // a redraw was held back for a form being filled in

  function context() {
    var element = document.getElementById("context");
    if (!element) { return {}; }
    return {
      namespace: element.getAttribute("data-namespace") || "",
      job: element.getAttribute("data-job") || "",
      execution: element.getAttribute("data-execution") || "",
      state: element.getAttribute("data-state") || "",
      offset: parseInt(element.getAttribute("data-offset") || "0", 10)
    };
  }

  function editing() {
    var active = document.activeElement;
    return active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }

  // What the visitor put in a form of the page and has not sent: a redraw would lose it.
  function unsent() {
    var fields = main.querySelectorAll("input, textarea");
    for (var i = 0; i < fields.length; i++) {
      var field = fields[i];
      var checkable = field.type === "checkbox" || field.type === "radio";
      if (checkable ? field.checked !== field.defaultChecked : field.value !== field.defaultValue) {
        return true;
      }
    }
    var options = main.querySelectorAll("option");
    for (var j = 0; j < options.length; j++) {
      if (options[j].selected !== options[j].defaultSelected) { return true; }
    }
    return false;
  }

  // Whether a redraw must wait for a form being filled in; if so, the header says it and the
  // redraw is tried again after the gap, until the form is sent or left as it was.
  function holdBack() {
    if (!editing() && !unsent()) { return false; }
    holding = true;
    live.textContent = "● live (not redrawn while a form is being filled in)";
    refresh();
    return true;
  }

  function refresh() {
    if (refreshTimer !== null) { return; }
    var wait = Math.max(0, lastRefresh + REFRESH_GAP_MS - Date.now());
    refreshTimer = window.setTimeout(function () {
      refreshTimer = null;
      lastRefresh = Date.now();
      if (holdBack()) { return; }
      window.fetch(window.location.href, {
        headers: { "X-Cronwire-Fragment": "1" },
        credentials: "same-origin",
        redirect: "manual"
      }).then(function (response) {
        if (!response.ok) { return null; }
        return response.text();
      }).then(function (html) {
        // Also checked now: the visitor may have filled a form in while the page was fetched.
        if (html === null || holdBack()) { return; }
        main.innerHTML = html;  // rendered and escaped by the server, like the page itself
        if (holding) { holding = false; live.textContent = "● live"; }
        followOutput();
      }).catch(function () { /* the next event tries again */ });
    }, wait);
  }

  function concerns(change) {
    var here = context();
    if (page === "overview" || page === "jobs") { return true; }
    if (page === "job") { return change.namespace === here.namespace && change.job === here.job; }
    if (page === "execution") {
      return change.namespace === here.namespace &&
        (change.execution === here.execution || change.job === here.job);
    }
    return false;
  }

  function cell(text) {
    var td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function addFeedRow(change) {
    var rows = document.getElementById("feed-rows");
    if (!rows) { return; }
    var tr = document.createElement("tr");
    tr.className = "fresh";
    [String(change.seq), change.time, change.type, change.resource, change.state, change.actor]
      .forEach(function (text) { tr.appendChild(cell(text)); });
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > MAX_FEED_ROWS) { rows.removeChild(rows.lastChild); }
  }

  function followOutput() {
    var here = context();
    if (page !== "execution") { return; }
    var running = here.state === "queued" || here.state === "running";
    if (output && (!running || here.offset !== outputOffset)) { output.close(); output = null; }
    if (!running || output) { return; }
    outputOffset = here.offset;
    var url = "/stream/output/" + encodeURIComponent(here.namespace) + "/" +
      encodeURIComponent(here.execution) + "?offset=" + here.offset;
    output = new window.EventSource(url);
    output.addEventListener("output", function (message) {
      var piece = JSON.parse(message.data);
      var pre = document.getElementById("output");
      if (pre && piece.data && piece.offset >= outputOffset) {
        pre.appendChild(document.createTextNode(piece.data));
        outputOffset = piece.offset + new TextEncoder().encode(piece.data).length;
        var element = document.getElementById("context");
        if (element) { element.setAttribute("data-offset", String(outputOffset)); }
      }
      if (piece.final) { output.close(); output = null; refresh(); }
    });
  }

  function follow() {
    var events = new window.EventSource("/stream/events");
    var opened = false;
    events.addEventListener("hello", function () {
      live.textContent = "● live";
      live.className = "live on";
      if (opened) { refresh(); }  // reconnected: catch up on what was missed
      opened = true;
    });
    events.addEventListener("change", function (message) {
      var change = JSON.parse(message.data);
      if (page === "events") { addFeedRow(change); return; }
      if (concerns(change)) { refresh(); }
    });
    events.onerror = function () {
      live.textContent = "○ reconnecting";
      live.className = "live off";
    };
  }

  if (page !== "login" && page !== "confirm") {
    follow();
    followOutput();
  }
})();
