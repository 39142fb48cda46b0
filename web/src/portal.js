// Docklet portal: live updates. Pages work without this script; with it, a page's live
// region (an element with data-live and htmx attributes) is refreshed whenever the lifecycle
// event stream (/api/v1/events, authenticated by the session cookie) reports a change.
(function () {
  "use strict";
  if (!document.querySelector("[data-live]") || !window.EventSource) return;
  let timer = null;
  // Several events arrive together (a cluster and its nodes): refresh once for them.
  const refresh = function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      document.body.dispatchEvent(new Event("docklet-event"));
    }, 200);
  };
  const source = new EventSource("/api/v1/events");
  ["cluster", "node", "operation", "image", "system-image", "host", "job", "task"].forEach(function (kind) {
    source.addEventListener(kind, refresh);
  });
  // After a reconnect the page may have missed events.
  source.addEventListener("open", refresh);
  window.dockletEvents = source;
})();
