// Attacks on the portal's users, replayed in headless Chromium against the testbed, each of
// which must now fail. A tenant runs a web server in a node (plain HTTP and TLS with a
// certificate of its own, both recording every request's headers), maps its ports, and
// sends the administrator links to them: under the portal's own name (cookies ignore ports)
// and under the ports' name. The administrator, logged in to the portal, opens them all.
import { test, expect } from "@playwright/test";
import { api, apiLogin, login, pamUser, removeClusters, rootPassword, sh, shot, portsHost } from "./testbed.mjs";

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

test.describe.serial("a tenant's mapped ports never receive the portal's cookies", () => {
  let plainPort;
  let tlsPort;

  test.beforeAll(async () => {
    pamUser(tenant.name, tenant.password);
    token = await apiLogin(tenant.name, tenant.password);
    await removeClusters(token);
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
});
