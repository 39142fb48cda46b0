// Docklet portal: a batch task's output, followed live. The page's <pre data-follow> names
// the API's followed log (same origin, the session's cookie); the answer streams as the
// file grows and ends when the instance has ended. A dropped connection resumes where it
// stopped (`offset` = the bytes already shown).
(function () {
  "use strict";
  const pre = document.querySelector("pre[data-follow]");
  if (!pre || !window.fetch || !window.TextDecoder) return;
  const status = document.getElementById("log-status");
  const say = function (text) { if (status) status.textContent = text; };
  let received = 0;
  let retries = 0;

  async function follow() {
    const url = pre.dataset.follow + "&offset=" + received;
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin" });
    } catch (e) {
      return again("connection lost");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
      say("cannot read the output: " + message);
      return;
    }
    say("following: new output appears as it is written");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        return again("connection lost");
      }
      if (chunk.done) break;
      received += chunk.value.length;
      retries = 0;
      const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 4;
      pre.append(decoder.decode(chunk.value, { stream: true }));
      if (atBottom) window.scrollTo(0, document.body.scrollHeight);
    }
    pre.append(decoder.decode());
    pre.dataset.ended = "true";
    say(received ? "the task has ended: this is all of its output" : "the task has ended without output");
  }

  function again(why) {
    retries += 1;
    if (retries > 10) { say(why + "; reload the page to try again"); return; }
    say(why + "; reconnecting…");
    setTimeout(follow, Math.min(500 * retries, 5000));
  }

  follow();
})();
