// The portal as users see it, in headless Chromium against the testbed: a PAM user logs in,
// creates a cluster in one click, watches it come up, uses its terminal and its Jupyter
// workspace, maps a port and reaches it from outside, and deletes the cluster; another user
// is refused the first one's terminal and workspace; an administrator changes a quota and the
// user sees the new limit; a user saves a node as an image, shares it, starts a cluster
// from it and deletes it, and the administrator updates the base image from it; a user watches a node's usage charts, and the administrator the
// hosts' and the usage export. Every page is saved as a screenshot (testbed.mjs: shots).
import { test, expect } from "@playwright/test";
import { readFileSync } from "node:fs";
import net from "node:net";
import { api, apiLogin, login, pamUser, removeClusters, rootPassword, shot, portal, watchPages, workspaceApi, workspaceOrigin } from "./testbed.mjs";

const owner = { name: "webalice", password: "Alice-pw-2026" };
const other = { name: "webbob", password: "Bob-pw-2026" };
let ownerToken;

/** Deletes every image `token`'s user owns. */
async function removeImages(token, user) {
  const [, images] = await api("GET", "/api/v1/images", token);
  for (const i of Array.isArray(images) ? images : []) {
    if (i.owner === user) await api("DELETE", `/api/v1/images/${i.owner}/${i.name}`, token);
  }
}

/** The text on the terminal's screen and in its scrollback. */
async function terminalText(page) {
  return page.evaluate(() => {
    const buffer = window.dockletTerminal.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return lines.join("\n");
  });
}

/** The first line a TCP server sends on connect (an SSH banner). */
function firstLine(host, port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, timeout: 10_000 });
    let data = "";
    socket.on("data", (chunk) => {
      data += chunk.toString("latin1");
      if (data.includes("\n")) { socket.destroy(); resolve(data.split("\n")[0]); }
    });
    socket.on("timeout", () => { socket.destroy(); reject(new Error("no banner within 10 s")); });
    socket.on("error", reject);
  });
}

test.describe.serial("the portal", () => {
  watchPages();

  test.beforeAll(async () => {
    pamUser(owner.name, owner.password);
    pamUser(other.name, other.password);
    ownerToken = await apiLogin(owner.name, owner.password);
    await removeClusters(ownerToken);
  });

  test("a user creates a cluster in one click and watches it come up", async ({ page }) => {
    await page.goto("/");
    await expect(page).toHaveURL(/\/login/);
    await shot(page, "login");
    await page.getByLabel("User name").fill(owner.name);
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Log in" }).click();
    await expect(page.getByRole("alert")).toContainText("Wrong user name or password");
    await shot(page, "login-refused");
    await login(page, owner.name, owner.password);
    await expect(page.getByRole("heading", { name: "Your clusters" })).toBeVisible();
    await shot(page, "dashboard-empty");

    await page.getByRole("button", { name: "Create cluster c1" }).click();
    await expect(page).toHaveURL(/\/clusters\/c1/);
    await expect(page.getByRole("status").first()).toContainText("being created");
    // Live: the page follows the event stream, no reload.
    await expect(page.locator("#progress")).toContainText("1 of 1 node(s) running", { timeout: 90_000 });
    await expect(page.locator("tr[data-node='0'] .state")).toHaveText("running");
    await shot(page, "cluster-running");
    await page.goto("/");
    await expect(page.locator("tr[data-cluster='c1']")).toContainText("running");
    await expect(page.locator(".usage")).toContainText("1 of");
    await shot(page, "dashboard-one-cluster");
  });

  test("the terminal reaches the node", async ({ page }) => {
    await login(page, owner.name, owner.password);
    await page.goto("/clusters/c1");
    await page.getByRole("link", { name: "Terminal" }).first().click();
    await expect(page.locator("#term-status")).toHaveText("connected");
    await expect.poll(() => terminalText(page)).toContain("#");
    await page.locator("#terminal").click();
    await page.keyboard.type("hostname\n");
    await expect.poll(() => terminalText(page)).toMatch(/^host-0\s*$/m);
    // Readable: xterm draws the text on its canvas (under the page's policy, which allows
    // no inline style or script, like every page's): more than one colour on it.
    const policy = (await page.request.get(page.url())).headers()["content-security-policy"];
    expect(policy).toContain("style-src 'self';");
    expect(policy).not.toContain("unsafe-inline");
    await expect.poll(() => page.locator(".xterm-screen canvas").evaluateAll((canvases) =>
      canvases.some((c) => {
        const pixels = new Uint32Array(c.getContext("2d").getImageData(0, 0, c.width, c.height).data.buffer);
        return pixels.some((p) => p !== pixels[0]);
      }))).toBe(true);
    // UTF-8 both ways, pasted as a user pastes (xterm's paste: bracketed, so Enter runs it).
    await page.evaluate(() => window.dockletTerminal.paste('echo "žluťoučký ✓"'));
    await page.keyboard.press("Enter");
    await expect.poll(() => terminalText(page)).toMatch(/^žluťoučký ✓\s*$/m);
    // Ctrl-C interrupts a command and the prompt comes back.
    await page.keyboard.type("sleep 300\n");
    await page.keyboard.press("Control+c");
    await page.keyboard.type("echo after-interrupt\n");
    await expect.poll(() => terminalText(page)).toMatch(/^after-interrupt\s*$/m);
    await shot(page, "terminal");
    // A reload reattaches to the same shell and shows what it printed before.
    await page.keyboard.type("echo shell-$$\n");
    await expect.poll(() => terminalText(page)).toMatch(/^shell-\d+\s*$/m);
    const before = (await terminalText(page)).match(/^shell-(\d+)\s*$/m)[1];
    await page.reload();
    await expect(page.locator("#term-status")).toHaveText("connected");
    await expect.poll(() => terminalText(page)).toContain(`shell-${before}`);
    await page.locator("#terminal").click();
    await page.keyboard.type("echo again-$$\n");
    await expect.poll(() => terminalText(page)).toContain(`again-${before}`);
  });

  test("the workspace runs a notebook that prints and plots", async ({ page }) => {
    const notebook = {
      type: "notebook",
      content: {
        nbformat: 4, nbformat_minor: 5,
        metadata: { kernelspec: { name: "python3", display_name: "Python 3", language: "python" } },
        cells: [{
          cell_type: "code", metadata: {}, outputs: [], execution_count: null,
          source: "%matplotlib inline\nimport matplotlib.pyplot as plt\n" +
            "print('sum is', 6 * 7)\nplt.plot([1, 4, 9, 16])\nplt.show()",
        }],
      },
    };
    const path = `/go/${owner.name}/c1/0`;
    const [status] = workspaceApi(owner.name, "PUT", `${path}/api/contents/plot.ipynb`, ownerToken, notebook);
    expect(status).toBeLessThan(300);
    await login(page, owner.name, owner.password);
    // The portal's link leads to the owner's own workspace host, never to the portal's origin.
    await page.goto(`${path}/tree`);
    const base = `${workspaceOrigin(owner.name)}${path}`;
    await expect(page).toHaveURL(`${base}/tree`);
    await expect(page.getByText("plot.ipynb")).toBeVisible({ timeout: 60_000 });
    await shot(page, "workspace-tree");
    await page.goto(`${base}/notebooks/plot.ipynb`);
    await expect(page.locator("#kernel_indicator_icon.kernel_idle_icon")).toBeAttached({ timeout: 60_000 });
    await page.locator(".cell .CodeMirror").first().click();
    await page.keyboard.press("Shift+Enter");
    await expect(page.locator(".output_area pre").first()).toContainText("sum is 42", { timeout: 60_000 });
    await expect(page.locator(".output_area img").first()).toBeVisible();
    await shot(page, "workspace-notebook");
  });

  test("a port mapped in the portal reaches the node's ssh from outside", async ({ page }) => {
    await login(page, owner.name, owner.password);
    await page.goto("/clusters/c1");
    await page.getByLabel("Port in the node").fill("22");
    await page.getByRole("button", { name: "Map port" }).click();
    await expect(page.getByRole("status").first()).toContainText("port is mapped");
    const row = page.locator("table.port-table tbody tr").first();
    await expect(row).toContainText("forwarding");
    const address = (await row.locator(".public-address").textContent()).trim();
    await shot(page, "cluster-port-mapped");
    const [host, port] = address.split(":");
    // The test runs outside the testbed's hosts: this is a connection from outside.
    await expect.poll(() => firstLine(host, Number(port)).catch((e) => e.message), { timeout: 30_000 })
      .toMatch(/^SSH-2\.0-OpenSSH/);
  });

  test("another user is refused the first one's terminal and workspace", async ({ page }) => {
    await login(page, other.name, other.password);
    const workspace = await page.request.get(`/go/${owner.name}/c1/0/tree`);
    expect(workspace.status()).toBe(403);
    const terminal = await page.request.get(
      `/api/v1/clusters/c1/nodes/0/terminal?user=${owner.name}`,
      { headers: { Origin: portal } },
    );
    expect(terminal.status()).toBe(403);
    await page.goto(`/go/${owner.name}/c1/0/tree`);
    await shot(page, "workspace-refused");
    // Straight to the owner's workspace host: without its cookie the browser is sent back
    // through the portal, which refuses.
    const direct = await page.goto(`${workspaceOrigin(owner.name)}/go/${owner.name}/c1/0/tree`);
    expect(direct.status()).toBe(403);
    expect(new URL(page.url()).origin).toBe(portal);
    // Admin pages are refused by the actions behind them, not only left out of the menu.
    const admin = await page.goto("/admin/users");
    expect(admin.status()).toBe(403);
    await expect(page.getByRole("alert")).toContainText("administrators only");
    await shot(page, "admin-refused");
    // Someone else's cluster page does not exist for this user.
    const foreign = await page.goto("/clusters/c1");
    expect(foreign.status()).toBe(404);
  });

  test("an administrator changes a quota and the user sees it", async ({ page, browser }) => {
    const rootToken = await apiLogin("root", rootPassword());
    await api("PATCH", `/api/v1/users/${owner.name}`, rootToken, { group: "foundation" });
    await api("DELETE", "/api/v1/groups/webtesters", rootToken);
    await login(page, "root", rootPassword());
    await page.goto("/admin/groups");
    await shot(page, "admin-groups");
    await page.locator("#new-group-name").fill("webtesters");
    await page.locator("#new-vnodes").fill("7");
    await page.getByRole("button", { name: "Create group" }).click();
    await expect(page.getByRole("status")).toContainText("group has been created");
    await page.goto("/admin/users");
    const row = page.locator(`tr[data-user='${owner.name}']`);
    await row.locator("select[name='group']").selectOption("webtesters");
    await row.getByRole("button", { name: "Save" }).click();
    await expect(page.getByRole("status")).toContainText("user has been saved");
    await shot(page, "admin-users");
    await page.goto("/admin/groups");
    // An egress allowance that is no destination is refused with the reason, nothing saved.
    const webtesters = page.locator("section[data-group='webtesters']");
    await webtesters.locator("input[name='egress_allow']").fill("192.168.77.0/24:443 not-a-network");
    await webtesters.getByRole("button", { name: "Save webtesters" }).click();
    await expect(page.locator("body")).toContainText("is not a destination");
    await page.goto("/admin/groups");
    await expect(webtesters.locator("input[name='egress_allow']")).toHaveValue("");
    await webtesters.locator("input[name='vnodes']").fill("5");
    await webtesters.locator("input[name='egress_allow']").fill("192.168.77.0/24:443");
    await webtesters.getByRole("button", { name: "Save webtesters" }).click();
    await expect(page.getByRole("status")).toContainText("group has been saved");
    await page.goto("/admin/groups");
    await expect(webtesters.locator("input[name='egress_allow']")).toHaveValue("192.168.77.0/24:443");
    const [listed, groups] = await api("GET", "/api/v1/groups", rootToken);
    expect(listed).toBe(200);
    expect(groups.find((g) => g.name === "webtesters").egress_allow).toEqual(["192.168.77.0/24:443"]);
    await page.goto("/admin/hosts");
    await expect(page.locator("tr[data-host]").first()).toBeVisible();
    await shot(page, "admin-hosts");

    const userContext = await browser.newContext();
    const userPage = await userContext.newPage();
    await login(userPage, owner.name, owner.password);
    await expect(userPage.locator(".usage")).toContainText("of 5");
    await expect(userPage.locator(".usage")).toContainText("webtesters");
    await shot(userPage, "dashboard-new-quota");
    await userContext.close();
  });

  test("the user deletes the cluster with a confirmation", async ({ page }) => {
    await login(page, owner.name, owner.password);
    await page.goto("/clusters/c1");
    await page.getByRole("link", { name: "Delete…" }).click();
    await shot(page, "confirm-delete");
    await page.getByLabel("Type c1 to confirm").fill("c1");
    await page.getByRole("button", { name: "Delete c1" }).click();
    await expect(page).toHaveURL(/\/\?done=deleted/);
    await expect(page.locator("tr[data-cluster='c1']")).toHaveCount(0, { timeout: 90_000 });
    await shot(page, "dashboard-deleted");
  });

  test("pages carry the security headers and refuse forged forms", async ({ page }) => {
    await login(page, owner.name, owner.password);
    const response = await page.goto("/account");
    const headers = response.headers();
    expect(headers["content-security-policy"]).toContain("frame-ancestors 'none'");
    expect(headers["x-frame-options"]).toBe("DENY");
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === "__Host-docklet_session");
    expect(session.httpOnly).toBe(true);
    expect(session.secure).toBe(true);
    expect(session.sameSite).toBe("Strict");
    expect(headers["strict-transport-security"]).toContain("max-age=");
    await shot(page, "account");
    // A form posted without the session's CSRF token changes nothing.
    const forged = await page.request.post("/clusters", { form: { csrf: "0".repeat(32) } });
    expect(forged.status()).toBe(403);
    const [, clusters] = await api("GET", "/api/v1/clusters", ownerToken);
    expect(clusters.map((c) => c.name)).not.toContain("c2");
  });
});

test.describe.serial("user images in the portal", () => {
  watchPages();
  const user = { name: "brimg", password: "Brimg-pw-2026" };
  const reference = `${user.name}/webimg`;
  let token;

  test.beforeAll(async () => {
    pamUser(user.name, user.password);
    token = await apiLogin(user.name, user.password);
    await removeClusters(token);
    await removeImages(token, user.name);
  });

  test.afterAll(async () => {
    await removeClusters(token);
    await removeImages(token, user.name);
  });

  test("a user saves a node as an image, shares it, starts a cluster from it and deletes it", async ({ page, browser }) => {
    await login(page, user.name, user.password);
    await page.getByText("Name, image and sizes").click();
    await page.locator("form.create input[name='name']").fill("imgsrc");
    await page.getByRole("button", { name: /^Create cluster/ }).click();
    await expect(page).toHaveURL(/\/clusters\/imgsrc/);
    await expect(page.locator("#progress")).toContainText("1 of 1 node(s) running", { timeout: 90_000 });
    const [status, ran] = await api("POST", "/api/v1/clusters/imgsrc/nodes/0/exec", token,
      { argv: ["sh", "-c", "echo saved-by-the-browser-test > /opt/webimg.txt"] });
    expect(status, JSON.stringify(ran)).toBe(200);
    expect(ran.exit_code).toBe(0);

    // Save node 0 from the cluster page: on to the images page, which follows the save.
    const saveForm = page.locator("details[data-save-node='0']");
    await saveForm.getByText("Save host-0 as an image").click();
    await saveForm.getByLabel("Image name").fill("webimg");
    await saveForm.getByLabel("Description").fill("made in the browser test");
    await shot(page, "cluster-save-image");
    await saveForm.getByRole("button", { name: "Save as image" }).click();
    await expect(page).toHaveURL(/\/images\?done=image-saving/);
    const row = page.locator(`#own-images tr[data-image='${reference}']`);
    await expect(row.locator(".state")).toHaveText(/saving|ready/);
    await shot(page, "images-saving");
    // No reload: the page polls itself while the save runs.
    await expect(row.locator(".state")).toHaveText("ready", { timeout: 180_000 });
    await expect(row.locator(".image-size")).not.toHaveText(/^(—|0 B)$/);
    await expect(row.locator(".description")).toHaveText("made in the browser test");
    await expect(row.locator(".sharing")).toHaveText("private");

    await row.getByRole("button", { name: "Share", exact: true }).click();
    await expect(page.getByRole("status")).toContainText("image is shared");
    await expect(row.locator(".sharing")).toHaveText("shared");
    await expect(row.getByRole("button", { name: "Unshare", exact: true })).toBeVisible();
    await shot(page, "images-shared");

    // The administrator makes the next version of the base image from the shared image,
    // on the images page, which follows the hosts until every one has it.
    const admin = await browser.newContext();
    const adminPage = await admin.newPage();
    await login(adminPage, "root", rootPassword());
    await adminPage.goto("/images");
    const base = adminPage.locator("#system-images tr[data-system-image='base']");
    await expect(base.locator(".system-state")).toHaveText(/^3 hosts on \d{8}T\d{6}Z$/);
    const before = await base.locator(".system-state").textContent();
    await base.locator("select[name='from']").selectOption(reference);
    await shot(adminPage, "images-system-update");
    await base.getByRole("button", { name: "Update base" }).click();
    await expect(adminPage).toHaveURL(/\/images\?done=system-image-updating/);
    await expect(adminPage.getByRole("status")).toContainText("new version of the system image");
    await expect(base.locator(".system-state")).toHaveText(/^(updating to|3 hosts on)/);
    await shot(adminPage, "images-system-updating");
    // No reload: the page polls itself while the hosts work.
    await expect(base.locator(".system-state")).toHaveText(/^3 hosts on \d{8}T\d{6}Z$/, { timeout: 300_000 });
    await expect(base.locator(".system-state")).not.toHaveText(before);
    await expect(base).toContainText(`from ${reference} by root`);
    await shot(adminPage, "images-system-updated");
    await admin.close();
    // Users see the system images, and no update form.
    await page.goto("/images");
    await expect(page.locator("#system-images tr[data-system-image='base']")).toBeVisible();
    await expect(page.locator("#system-images form")).toHaveCount(0);

    // A name that is no name: refused, with the reason, on the cluster page.
    await page.goto("/clusters/imgsrc");
    await saveForm.getByText("Save host-0 as an image").click();
    await saveForm.getByLabel("Image name").fill("../x");
    await saveForm.getByRole("button", { name: "Save as image" }).click();
    await expect(page.getByRole("alert")).toContainText("may only contain");
    await expect(page.getByRole("heading", { name: /Cluster imgsrc/ })).toBeVisible();
    await shot(page, "cluster-save-image-refused");

    // A new cluster from the image, chosen in the create form.
    await page.goto("/images");
    await row.getByRole("link", { name: "New cluster from this image" }).click();
    await expect(page.locator("#create-image")).toHaveValue(reference);
    await page.locator("form.create input[name='name']").fill("fromimg");
    await shot(page, "dashboard-create-from-image");
    await page.getByRole("button", { name: /^Create cluster/ }).click();
    await expect(page).toHaveURL(/\/clusters\/fromimg/);
    await expect(page.locator("#progress")).toContainText("1 of 1 node(s) running", { timeout: 180_000 });
    await expect(page.locator("dl.facts")).toContainText(reference);
    const [, seen] = await api("POST", "/api/v1/clusters/fromimg/nodes/0/exec", token,
      { argv: ["cat", "/opt/webimg.txt"] });
    expect(seen.stdout).toBe("saved-by-the-browser-test\n");

    // In use: the delete is refused and says by whom.
    await page.goto("/images");
    await row.getByText("Delete…").click();
    await row.getByRole("button", { name: `Delete the image ${reference}` }).click();
    await expect(page.getByRole("alert")).toContainText("is used by cluster(s)");
    await expect(page.getByRole("alert")).toContainText(`${user.name}/fromimg`);
    await expect(row).toHaveCount(1);
    await shot(page, "images-delete-refused");

    // Without its clusters the image goes.
    await removeClusters(token);
    await page.goto("/images");
    await row.getByText("Delete…").click();
    await row.getByRole("button", { name: `Delete the image ${reference}` }).click();
    await expect(page.getByRole("status")).toContainText("image has been deleted");
    await expect(row).toHaveCount(0);
    await shot(page, "images-deleted");
  });
});

test.describe.serial("usage charts and the usage export", () => {
  watchPages();
  const user = { name: "brchart", password: "Brchart-pw-2026" };
  const header = "user,date,vnode_hours,cpu_hours,memory_gib_hours";
  let token;

  test.beforeAll(async () => {
    pamUser(user.name, user.password);
    token = await apiLogin(user.name, user.password);
    await removeClusters(token);
  });

  test.afterAll(async () => {
    await removeClusters(token);
  });

  test("a user sees a node's figures and charts on the cluster page", async ({ page }) => {
    await login(page, user.name, user.password);
    await page.getByText("Name, image and sizes").click();
    await page.locator("form.create input[name='name']").fill("charts");
    await page.locator("form.create input[name='size']").fill("1");
    await page.getByRole("button", { name: /^Create cluster/ }).click();
    await expect(page).toHaveURL(/\/clusters\/charts/);
    await expect(page.locator("#progress")).toContainText("1 of 1 node(s) running", { timeout: 90_000 });
    const usage = page.locator("#usage");
    await expect(usage.getByRole("heading", { name: "Usage" })).toBeVisible();
    const node = usage.locator("[data-node-index='0']");
    // Workers sample every 10 s and the master collects as often: the first CPU figure needs
    // two samples. The page asks every few seconds until it has it.
    await expect(node.locator(".uplot canvas").first()).toBeVisible({ timeout: 40_000 });
    await expect(node.locator("[data-figure='cpu']")).toHaveText(/^\d+(\.\d)? %$/, { timeout: 40_000 });
    await expect(node.locator("[data-figure='memory']")).toHaveText(/\d/);
    await expect(node.locator("[data-figure='processes']")).toHaveText(/^\d+$/);
    await expect(node.locator(".uplot")).toHaveCount(3);
    await shot(page, "cluster-usage");
    // Another window: the same charts, drawn again.
    await usage.getByLabel("Show the last").selectOption("86400");
    await expect(usage.locator("[data-metrics-status]")).toContainText("updated");
    await expect(node.locator(".uplot")).toHaveCount(3);
    // The export is the administrators'.
    const refused = await page.request.get("/api/v1/usage?from=2026-01-01&to=2026-01-02");
    expect(refused.status()).toBe(403);
  });

  test("the administrator sees each host's charts and exports the usage", async ({ page }) => {
    await login(page, "root", rootPassword());
    await page.goto("/admin/hosts");
    const hosts = await page.locator("tr[data-host]").count();
    expect(hosts).toBeGreaterThan(0);
    const cards = page.locator("#host-usage .metrics-card");
    await expect(cards).toHaveCount(hosts);
    for (let i = 0; i < hosts; i++) {
      await expect(cards.nth(i).locator(".uplot canvas").first()).toBeVisible({ timeout: 40_000 });
    }
    await expect(cards.first().locator("[data-figure='cpu']")).toHaveText(/ %/, { timeout: 40_000 });
    await expect(cards.first().locator("[data-figure='memory']")).toContainText(" of ");
    await shot(page, "admin-hosts-usage");

    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Usage" }).click();
    await expect(page).toHaveURL(/\/admin\/usage/);
    const from = await page.getByLabel("From").inputValue();
    const to = await page.getByLabel("to", { exact: true }).inputValue();
    expect(from).toMatch(/^\d{4}-\d{2}-01$/);
    expect(to).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    // The user's node of the test before ran this month, so it was counted.
    await expect(page.locator(`tr[data-usage-user='${user.name}']`)).toBeVisible();
    await shot(page, "admin-usage");

    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Download CSV" }).click(),
    ]);
    expect(download.suggestedFilename()).toBe(`docklet-usage-${from}-${to}.csv`);
    const lines = readFileSync(await download.path(), "utf8").split("\n");
    expect(lines[0]).toBe(header);
    expect(lines.some((l) => l.startsWith(`${user.name},`))).toBe(true);
    const csv = await page.request.get(`/api/v1/usage?from=${from}&to=${to}`);
    expect(csv.status()).toBe(200);
    expect(csv.headers()["content-type"]).toContain("text/csv");
    expect((await csv.text()).split("\n")[0]).toBe(header);
  });
});
