// Docklet portal: the web terminal. xterm.js on a WebSocket to the master, which relays to
// a shell in the node. Binary frames carry terminal bytes both ways; text frames carry
// control messages: {"resize":{cols,rows}} from here, {"session":id,"new"?}, {"exit":N} and
// {"error":text} from the server. A dropped connection reconnects with the session id and
// gets the same shell back, with its recent output replayed.
(function () {
  "use strict";
  const element = document.getElementById("terminal");
  const status = document.getElementById("term-status");
  const say = function (text) { status.textContent = text; };
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  // Drawn on a canvas, set up before the terminal opens: xterm's default DOM renderer
  // colours the text with style elements it makes, which the page's policy (no inline
  // styles) refuses.
  term.loadAddon(new CanvasAddon.CanvasAddon());
  term.open(element);
  fit.fit();
  term.focus();
  window.dockletTerminal = term; // for the browser tests, and for people poking around
  const key = "docklet-terminal:" + element.dataset.socket;
  let session = sessionStorage.getItem(key);
  let socket = null;
  let finished = false;
  let retries = 0;
  const encoder = new TextEncoder();

  function send(data) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + element.dataset.socket +
      "?cols=" + term.cols + "&rows=" + term.rows;
    if (session) url += "&session=" + encodeURIComponent(session);
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = function () { retries = 0; say("connected"); };
    socket.onmessage = function (event) {
      if (typeof event.data !== "string") {
        term.write(new Uint8Array(event.data));
        return;
      }
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.session) {
        // A reattached session replays its recent output: start from a clean screen so
        // nothing shows twice.
        if (!message.new && session === message.session) term.reset();
        session = message.session;
        sessionStorage.setItem(key, session);
        send(JSON.stringify({ resize: { cols: term.cols, rows: term.rows } }));
      }
      if (message.error) say(message.error);
      if (message.exit !== undefined) {
        finished = true;
        sessionStorage.removeItem(key);
        say("The shell ended (status " + message.exit + "). Reload the page for a new one.");
      }
    };
    socket.onclose = function (event) {
      if (finished) return;
      if (event.code === 1008 || event.code === 4403) {
        finished = true;
        say("Refused: " + (event.reason || "not allowed"));
        return;
      }
      const wait = Math.min(500 * Math.pow(2, retries++), 10000);
      say("Disconnected; reconnecting in " + Math.round(wait / 1000) + " s…");
      setTimeout(connect, wait);
    };
  }

  term.onData(function (data) { send(encoder.encode(data)); });
  term.onBinary(function (data) {
    send(Uint8Array.from(data, function (c) { return c.charCodeAt(0); }));
  });
  term.onResize(function (size) {
    send(JSON.stringify({ resize: { cols: size.cols, rows: size.rows } }));
  });
  window.addEventListener("resize", function () { fit.fit(); });
  // Ctrl+C stays the interrupt; Ctrl+Shift+C and Ctrl+Shift+V copy and paste.
  term.attachCustomKeyEventHandler(function (event) {
    if (event.type !== "keydown" || !event.ctrlKey || !event.shiftKey) return true;
    if (event.code === "KeyC") {
      const text = term.getSelection();
      if (text && navigator.clipboard) navigator.clipboard.writeText(text);
      return false;
    }
    if (event.code === "KeyV") {
      if (navigator.clipboard) navigator.clipboard.readText().then(function (t) { term.paste(t); });
      return false;
    }
    return true;
  });
  if (element.dataset.title) document.title = element.dataset.title + " · Docklet";
  connect();
})();
