// What the browser tests need from the testbed besides the browser: commands on its hosts
// (users for PAM, the administrator's password) and a few API calls to set up and check.
import { test, expect } from "@playwright/test";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
// The portal's name and the ports' name resolve to tb1 through this machine's /etc/hosts
// (tools/testbed up); Node trusts the site CA through NODE_EXTRA_CA_CERTS and Chromium
// through the NSS database that tools/test makes (DOCKLET_BROWSER_HOME).
export const portal = process.env.DOCKLET_PORTAL || "https://portal.docklet.test:8000";
export const portsHost = "ports.docklet.test";
/** The origin of `user`'s workspaces (plain user names are their own host label). */
export function workspaceOrigin(user) {
  return `https://${user}.ws.docklet.test:8000`;
}

/** An API call on `user`'s workspace host as `token`, with curl (Node's resolver knows no
 * workspace names; curl is told where they lead, as Chromium is); returns [status, body]. */
export function workspaceApi(user, method, urlPath, token, body) {
  const origin = workspaceOrigin(user);
  const host = new URL(origin).hostname;
  const out = execFileSync("curl", ["-s", "-m", "60", "--cacert", process.env.NODE_EXTRA_CA_CERTS || "/var/lib/docklet-testbed/site-ca.pem",
    "--resolve", `${host}:8000:${process.env.DOCKLET_WORKSPACE_ADDRESS || "10.213.0.11"}`,
    "-X", method, "-H", `Authorization: Bearer ${token}`, "-H", "Content-Type: application/json",
    "--data-binary", "@-", "-w", "\n%{http_code}", origin + urlPath],
  { input: body ? JSON.stringify(body) : "", encoding: "utf8" });
  const cut = out.lastIndexOf("\n");
  const text = out.slice(0, cut);
  let parsed = text;
  try { parsed = JSON.parse(text); } catch (e) { /* not JSON */ }
  return [Number(out.slice(cut + 1)), parsed];
}
export const shots = process.env.DOCKLET_SHOTS || path.join(repo, "target/browser-screenshots");
mkdirSync(shots, { recursive: true });

/** Runs a shell script on a testbed host; returns its standard output. */
export function sh(host, script) {
  return execFileSync(path.join(repo, "tools/testbed"), ["exec", host, "sh", "-c", script], {
    encoding: "utf8",
    timeout: 60_000,
  });
}

/** A PAM user on every host (Docklet creates the account at the first login). */
export function pamUser(name, password) {
  for (const host of ["tb1", "tb2", "tb3"]) {
    sh(host, `id ${name} >/dev/null 2>&1 || useradd -m ${name}; echo '${name}:${password}' | chpasswd`);
  }
}

export function rootPassword() {
  return sh("tb1", "cat /var/lib/docklet-master/generated_password.txt").trim();
}

/** An API call as `token`; returns [status, parsed body]. */
export async function api(method, urlPath, token, body) {
  const response = await fetch(portal + urlPath, {
    method,
    headers: {
      ...(token ? { authorization: "Bearer " + token } : {}),
      ...(body ? { "content-type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch (e) { /* not JSON */ }
  return [response.status, parsed];
}

/** Deletes every cluster and port mapping `token`'s user has and waits until they are gone. */
export async function removeClusters(token) {
  const [, ports] = await api("GET", "/api/v1/ports", token);
  for (const p of ports) await api("DELETE", `/api/v1/ports/${p.public_port}`, token);
  const [, clusters] = await api("GET", "/api/v1/clusters", token);
  for (const c of clusters) {
    const [, op] = await api("DELETE", `/api/v1/clusters/${c.name}?force=true`, token);
    if (op && op.id) await api("GET", `/api/v1/operations/${op.id}?wait=120`, token);
  }
}

export async function apiLogin(user, password) {
  const [status, body] = await api("POST", "/api/v1/auth/login", null, { user, password });
  if (status !== 200) throw new Error(`login of ${user}: ${status} ${JSON.stringify(body)}`);
  return body.token;
}

let shotCount = 0;
/** A full-page screenshot, numbered in the order the test took them. */
export async function shot(page, name) {
  shotCount += 1;
  const file = path.join(shots, `${String(shotCount).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Logs `user` in through the login form. */
export async function login(page, user, password) {
  await page.goto("/login");
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL((url) => !url.pathname.startsWith("/login"));
}

/** Fails the running test if a page's script failed or its Content-Security-Policy blocked
 * something: either would leave a part of the page silently broken. */
export function watchPages() {
  let problems = [];
  test.beforeEach(({ page }) => {
    problems = [];
    page.on("console", (m) => {
      if (m.type() === "error" && m.text().includes("Content Security Policy")) problems.push(m.text());
    });
    page.on("pageerror", (e) => problems.push(String(e)));
  });
  test.afterEach(() => {
    expect(problems).toEqual([]);
  });
}
