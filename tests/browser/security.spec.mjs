// Attacks on the portal's users, replayed in headless Chromium against the testbed, each of
// which must now fail. A tenant runs a web server in a node (plain HTTP and TLS with a
// certificate of its own, both recording every request's headers), maps its ports, and
// sends the administrator links to them: under the portal's own name (cookies ignore ports)
// and under the ports' name. The administrator, logged in to the portal, opens them all.
// Then the node serves a hostile page in its workspace (as a shared image or a compromised
// service could), and its owner, logged in to the portal, opens it: the page tries to use
// the owner's portal session.
import { test, expect } from "@playwright/test";
import { api, apiLogin, login, removeClusters, rootPassword, sh, shot, portal, portsHost, workspaceOrigin } from "./testbed.mjs";

const tenant = { name: "webmallory", password: "Mallory-pw-2026" };
const portalHost = new URL(process.env.DOCKLET_PORTAL || "https://portal.docklet.test:8000").hostname;
let token;

/** Runs argv in node 0 of the tenant's cluster `spy`; returns its stdout. */
async function inNode(argv) {
  const [status, body] = await api("POST", "/api/v1/clusters/spy/nodes/0/exec", token, { argv });
  if (status !== 200 || body.exit_code !== 0) {
    throw new Error(`exec ${argv.join(" ")}: ${status} ${JSON.stringify(body)}`);
  }
  return body.stdout;
}

// The tenant's server: every request's Host and Cookie go to /root/seen.log, one JSON line each.
const SPY = `
import http.server, json, ssl, threading
class Spy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open("/root/seen.log", "a") as log:
            log.write(json.dumps({"port": self.server.server_port, "host": self.headers.get("Host"),
                                  "cookie": self.headers.get("Cookie")}) + "\\n")
        body = b"<html><body><h1>the tenant's page</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
plain = http.server.ThreadingHTTPServer(("", 80), Spy)
tls = http.server.ThreadingHTTPServer(("", 443), Spy)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/root/spy.pem", "/root/spy.key")
tls.socket = context.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=tls.serve_forever, daemon=True).start()
plain.serve_forever()
`;

// The node's page in the workspace: every way it could use the owner's portal session, each
// result written into the page for the test to read. It even knows the owner's password, so
// only the portal's rules can stop a change.
const HOSTILE_PAGE = `<!doctype html><html><body><h1>the node's page</h1><pre id="results"></pre><script>
const portal = PORTAL, user = USER, password = PASSWORD;
const results = {};
async function attempt(name, f) {
  try { results[name] = "reached: " + await f(); } catch (e) { results[name] = "blocked: " + e; }
}
(async () => {
  await attempt("readMe", async () => (await fetch(portal + "/api/v1/me", { credentials: "include" })).text());
  await attempt("readAccount", async () => (await fetch(portal + "/account", { credentials: "include" })).text());
  // A simple request leaves the browser without a preflight, with the cookie if the browser
  // sends it: only the portal can refuse it.
  await attempt("mintToken", async () => (await fetch(portal + "/api/v1/tokens", { method: "POST",
    credentials: "include", mode: "no-cors", headers: { "Content-Type": "text/plain" },
    body: JSON.stringify({ name: "stolen" }) })).type);
  await attempt("patchPassword", async () => (await fetch(portal + "/api/v1/users/" + user, {
    method: "PATCH", credentials: "include", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ password: "Stolen-pw-2026", current_password: password }) })).status);
  // The portal's own password form, posted into a hidden frame.
  const frame = document.createElement("iframe");
  frame.name = "sink";
  document.body.appendChild(frame);
  const form = document.createElement("form");
  form.method = "POST"; form.action = portal + "/account/password"; form.target = "sink";
  for (const [name, value] of [["current", password], ["password", "Stolen-pw-2026"],
    ["repeat", "Stolen-pw-2026"], ["csrf", "guessed"]]) {
    const input = document.createElement("input");
    input.name = name; input.value = value; form.appendChild(input);
  }
  document.body.appendChild(form);
  const loaded = new Promise((done) => { frame.onload = done; setTimeout(done, 5000); });
  form.submit();
  await loaded;
  // A service worker over the whole host (the node's server allows it, the proxy does not).
  await attempt("serviceWorker", async () =>
    (await navigator.serviceWorker.register("sw.js", { scope: "/" })).scope);
  document.getElementById("results").textContent = JSON.stringify(results);
  const done = document.createElement("p");
  done.id = "done";
  document.body.appendChild(done);
})();
</script></body></html>`;

// The node's server in Jupyter's place (port 8888, under the workspace's path).
const HOSTILE_SERVER = `
import http.server, sys
page = open("/root/hostile.html", "rb").read()
class Hostile(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/sw.js"):
            body, kind = b"self.addEventListener('fetch', () => {});", "text/javascript"
        else:
            body, kind = page, "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Service-Worker-Allowed", "/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 8888), Hostile).serve_forever()
`;

test.describe.serial("a tenant's node never reaches the portal's users", () => {
  let plainPort;
  let tlsPort;

  test.beforeAll(async () => {
    // A local account (its password is Docklet's to change, so a change could be attempted).
    const root = await apiLogin("root", rootPassword());
    const [, users] = await api("GET", "/api/v1/users", root);
    if (users.some((u) => u.user === tenant.name)) {
      const [, clusters] = await api("GET", `/api/v1/clusters?user=${tenant.name}`, root);
      for (const c of clusters) {
        const [, op] = await api("DELETE", `/api/v1/clusters/${c.name}?user=${tenant.name}&force=true`, root);
        if (op && op.id) await api("GET", `/api/v1/operations/${op.id}?wait=120`, root);
      }
      const [gone] = await api("DELETE", `/api/v1/users/${tenant.name}`, root);
      expect(gone).toBe(204);
    }
    const [made, body] = await api("POST", "/api/v1/users", root, { name: tenant.name, password: tenant.password });
    expect(made, JSON.stringify(body)).toBe(201);
    token = await apiLogin(tenant.name, tenant.password);
    const [status, op] = await api("POST", "/api/v1/clusters", token, { name: "spy", size: 1 });
    expect(status).toBe(202);
    const [, done] = await api("GET", `/api/v1/operations/${op.id}?wait=120`, token);
    expect(done.state).toBe("succeeded");
    // A certificate of the tenant's own, claiming both names (made on tb1, which has openssl).
    const pem = sh("tb1", `d=$(mktemp -d) && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -nodes -days 2 -subj /CN=${portalHost} -addext subjectAltName=DNS:${portalHost},DNS:${portsHost} \
      -keyout $d/k -out $d/c 2>/dev/null && cat $d/c && echo ==== && cat $d/k && rm -r $d`);
    const [cert, key] = pem.split("====\n");
    await inNode(["sh", "-c", 'printf %s "$1" > /root/spy.pem && printf %s "$2" > /root/spy.key && printf %s "$3" > /root/spy.py',
      "sh", cert, key, SPY]);
    await inNode(["systemd-run", "--unit=spy", "python3", "/root/spy.py"]);
    for (const port of [80, 443]) {
      const [status, mapping] = await api("POST", "/api/v1/clusters/spy/nodes/0/ports", token, { port });
      expect(status, JSON.stringify(mapping)).toBe(201);
      // Announced under the ports' name, never the portal's.
      expect(mapping.address).toBe(`${portsHost}:${mapping.public_port}`);
      if (port === 80) plainPort = mapping.public_port; else tlsPort = mapping.public_port;
    }
  });

  test.afterAll(async () => {
    await removeClusters(token);
  });

  test("the administrator opens every link and no Docklet cookie reaches the node", async ({ page }) => {
    await login(page, "root", rootPassword());
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === "__Host-docklet_session");
    expect(session, JSON.stringify(cookies)).toBeTruthy();

    // The ports' name: the tenant's own page opens (it is theirs to serve), without cookies.
    await expect.poll(async () => {
      const r = await page.goto(`http://${portsHost}:${plainPort}/`).catch((e) => e);
      return r instanceof Error ? r.message : r.status();
    }, { timeout: 30_000 }).toBe(200);
    await expect(page.getByRole("heading", { name: "the tenant's page" })).toBeVisible();
    await shot(page, "mapped-port-on-ports-host");

    // Under the portal's name, every scheme and both servers: HSTS turns http:// into
    // https://, and no certificate but the portal's is accepted for its name.
    const refused = {};
    for (const url of [
      `http://${portalHost}:${plainPort}/`,
      `https://${portalHost}:${plainPort}/`,
      `http://${portalHost}:${tlsPort}/`,
      `https://${portalHost}:${tlsPort}/`,
      `https://${portsHost}:${tlsPort}/`,
    ]) {
      const outcome = await page.goto(url).then((r) => `HTTP ${r.status()}`, (e) => e.message);
      refused[url] = outcome.split("\n")[0];
    }
    for (const [url, outcome] of Object.entries(refused)) {
      expect(outcome, `${url}: ${JSON.stringify(refused)}`).toMatch(/net::ERR_(SSL|CERT)_/);
    }
    // The http:// link under the portal's name never left the browser as plain HTTP: it was
    // upgraded before any byte went out (HSTS), so the plain server failed a TLS handshake.
    expect(refused[`http://${portalHost}:${plainPort}/`]).toMatch(/ERR_SSL_PROTOCOL_ERROR/);

    const seen = (await inNode(["cat", "/root/seen.log"])).trim().split("\n").map((l) => JSON.parse(l));
    // The tenant's server works and records: the visit under the ports' name is there.
    expect(seen.some((r) => r.host === `${portsHost}:${plainPort}`), JSON.stringify(seen)).toBe(true);
    for (const request of seen) {
      expect(request.host, JSON.stringify(seen)).not.toContain(portalHost);
      expect(request.cookie || "", JSON.stringify(seen)).not.toMatch(/docklet|dkt_/);
    }
  });

  test("a page the node serves in the workspace cannot use its owner's portal session", async ({ page }) => {
    const hostile = HOSTILE_PAGE.replace("PORTAL", JSON.stringify(portal))
      .replace("USER", JSON.stringify(tenant.name)).replace("PASSWORD", JSON.stringify(tenant.password));
    await inNode(["sh", "-c", 'printf %s "$1" > /root/hostile.html && printf %s "$2" > /root/hostile.py',
      "sh", hostile, HOSTILE_SERVER]);
    await inNode(["systemctl", "stop", "docklet-jupyter.socket", "docklet-jupyter-proxy.service",
      "docklet-jupyter.service"]);
    await inNode(["systemd-run", "--unit=hostile", "python3", "/root/hostile.py"]);
    const [, tokensBefore] = await api("GET", "/api/v1/tokens", token);

    await login(page, tenant.name, tenant.password);
    // The portal's link to the workspace leads to the owner's own host, never the portal's.
    await expect.poll(async () => {
      const r = await page.goto(`/go/${tenant.name}/spy/0/hostile.html`).catch((e) => e);
      return r instanceof Error ? r.message : r.status();
    }, { timeout: 30_000 }).toBe(200);
    expect(new URL(page.url()).origin).toBe(workspaceOrigin(tenant.name));
    await expect(page.locator("#done")).toBeAttached({ timeout: 30_000 });
    const results = JSON.parse(await page.locator("#results").textContent());
    await shot(page, "workspace-hostile-page");
    // Nothing of the portal can be read from the workspace's origin...
    expect(results.readMe, JSON.stringify(results)).toMatch(/^blocked/);
    expect(results.readAccount, JSON.stringify(results)).toMatch(/^blocked/);
    expect(results.patchPassword, JSON.stringify(results)).toMatch(/^blocked/);
    // ... no service worker takes the host ...
    expect(results.serviceWorker, JSON.stringify(results)).toMatch(/^blocked: SecurityError/);
    // ... and what did leave the browser changed nothing: no token was minted, and the
    // password is the owner's own.
    const [, tokensAfter] = await api("GET", "/api/v1/tokens", token);
    expect(tokensAfter.map((t) => t.name)).not.toContain("stolen");
    const apiTokens = (tokens) => tokens.filter((t) => t.kind === "api").map((t) => t.id);
    expect(apiTokens(tokensAfter)).toEqual(apiTokens(tokensBefore));
    await apiLogin(tenant.name, tenant.password);
    const [refused] = await api("POST", "/api/v1/auth/login", null, { user: tenant.name, password: "Stolen-pw-2026" });
    expect(refused).toBe(401);
  });
});
