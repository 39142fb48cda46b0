// Batch jobs in the portal, in headless Chromium against the testbed: a user builds a
// two-task job in the form, is told which field is wrong without losing what was typed,
// checks it, submits it, watches its tasks run in dependency order, follows a task's output
// live and reads its exit code and what it used; an administrator sees every job, holds,
// releases and cancels one, and reads the fair-share table. Screenshots in DOCKLET_SHOTS.
import { test, expect } from "@playwright/test";
import { api, apiLogin, login, pamUser, rootPassword, shot, watchPages } from "./testbed.mjs";

const user = { name: "webjobs", password: "Jobs-pw-2026" };
let userToken;

/** Cancels every job of the user's still running (a rerun starts clean). */
async function cancelJobs(token) {
  const [, jobs] = await api("GET", "/api/v1/jobs?active=true", token);
  for (const j of Array.isArray(jobs) ? jobs : []) await api("POST", `/api/v1/jobs/${j.id}/cancel`, token);
}

test.describe.serial("batch jobs in the portal", () => {
  watchPages();

  test.beforeAll(async () => {
    pamUser(user.name, user.password);
    userToken = await apiLogin(user.name, user.password);
    await cancelJobs(userToken);
  });

  test("a user builds, checks and submits a job, and follows it to its end", async ({ page }) => {
    const [, before] = await api("GET", "/api/v1/jobs", userToken);
    await login(page, user.name, user.password);
    await page.getByRole("link", { name: "Jobs", exact: true }).click();
    await expect(page.getByRole("heading", { name: "Batch jobs" })).toBeVisible();
    await page.getByRole("link", { name: "New job" }).click();
    await page.getByLabel("Job name").fill("portal-job");
    const task = (i) => page.locator(`fieldset[data-task-index='${i}']`);
    await task(0).getByLabel("Name", { exact: true }).fill("prep");
    await task(0).locator("textarea[name$='.script']").fill("echo prepared on $(hostname)");
    await page.getByRole("button", { name: "Add a task" }).click();
    // The form comes back with a second task and the first as typed.
    await expect(task(0).locator("textarea[name$='.script']")).toHaveValue("echo prepared on $(hostname)");
    await task(1).getByLabel("Name", { exact: true }).fill("run");
    await task(1).getByLabel(/^After tasks/).fill("nowhere");
    const script = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 1; done\nhead -c 20000000 /dev/zero | md5sum >&2\nexit 3";
    await task(1).locator("textarea[name$='.script']").fill(script);
    await page.getByRole("button", { name: "Check" }).click();
    // Refused: the field is named and marked, nothing typed is lost, nothing is queued.
    await expect(page.getByRole("alert")).toContainText(`depends on "nowhere", which is not a task of this job`);
    await expect(task(1).getByLabel(/^After tasks/)).toHaveAttribute("aria-invalid", "true");
    await expect(task(1).locator("textarea[name$='.script']")).toHaveValue(script);
    await shot(page, "job-form-refused");
    const [, after] = await api("GET", "/api/v1/jobs", userToken);
    expect(after.length).toBe(before.length);
    await task(1).getByLabel(/^After tasks/).fill("prep");
    await page.getByRole("button", { name: "Check" }).click();
    await expect(page.getByRole("status").first()).toContainText("The job is valid: 2 task(s), 2 instance(s)");
    await shot(page, "job-form-checked");
    await page.getByRole("button", { name: "Submit job" }).click();
    await expect(page).toHaveURL(/\/jobs\/\d+/);
    await expect(page.getByRole("status").first()).toContainText("queued");
    // The graph: prep before run; the page follows the job live.
    await expect(page.locator(".dag-level").first()).toContainText("prep");
    await expect(page.locator(".dag-level").nth(1)).toContainText("run");
    await expect(page.locator("li[data-task='prep'] .state")).toHaveText("succeeded", { timeout: 120_000 });
    await expect(page.locator("li[data-task='run'] .state")).toHaveText("running", { timeout: 120_000 });
    await shot(page, "job-running");
    // Its output, followed while it is written.
    const jobUrl = page.url();
    await page.locator("tr[data-instance='run.0']").getByRole("link", { name: "stdout" }).click();
    await expect(page.locator("#job-log")).toContainText("line-1", { timeout: 30_000 });
    const early = await page.locator("#job-log").textContent();
    expect(early).not.toContain("line-6");
    await expect(page.locator("#job-log")).toContainText("line-6", { timeout: 30_000 });
    await expect(page.locator("#log-status")).toContainText("has ended", { timeout: 60_000 });
    await shot(page, "job-output-followed");
    await page.getByRole("link", { name: "stderr" }).click();
    await expect(page.locator("#job-log")).toContainText("-", { timeout: 30_000 });
    // The job's end: failed with exit code 3, what the command used.
    await page.goto(jobUrl);
    await expect(page.locator("#job-state .state")).toHaveText("failed", { timeout: 60_000 });
    await expect(page.locator("#job-reason")).toContainText("exit code 3");
    const run = page.locator("tr[data-instance='run.0']");
    await expect(run.locator(".exit-code")).toHaveText("3");
    await expect(run.locator(".cpu-time")).toHaveText(/^\d+(\.\d+)? s$/);
    await expect(page.locator("tr[data-instance='prep.0'] .exit-code")).toHaveText("0");
    await shot(page, "job-ended");
    await page.getByRole("link", { name: "Jobs", exact: true }).click();
    await expect(page.locator("#ended-jobs")).toContainText("portal-job");
  });

  test("an administrator holds, releases and cancels a user's job and reads the fair share", async ({ page }) => {
    const [status, job] = await api("POST", "/api/v1/jobs", userToken, {
      name: "long-sweep",
      tasks: [{ name: "s", script: "sleep 120", array: "0-3%1" }],
    });
    expect(status).toBe(201);
    await login(page, "root", rootPassword());
    await page.getByRole("link", { name: "All jobs" }).click();
    const row = page.locator(`#all-active-jobs tr[data-job='${job.id}']`);
    await expect(row).toContainText(user.name);
    await row.getByRole("button", { name: "Hold" }).click();
    await expect(page.getByRole("status").first()).toContainText("held");
    await expect(row.locator(".state")).toHaveText("held");
    await shot(page, "admin-job-held");
    const [, held] = await api("GET", `/api/v1/jobs/${job.id}`, userToken);
    expect(held.held).toBe(true);
    await row.getByRole("button", { name: "Release" }).click();
    await expect(page.getByRole("status").first()).toContainText("released");
    await expect(row.getByRole("button", { name: "Hold" })).toBeVisible();
    await row.getByText("Cancel…").click();
    await row.getByRole("button", { name: `Cancel job ${job.id} of ${user.name}` }).click();
    await expect(page.getByRole("status").first()).toContainText("cancelled");
    await expect(page.locator(`#all-ended-jobs tr[data-job='${job.id}']`)).toContainText("cancelled", { timeout: 30_000 });
    // The first test's job was charged to the user and the group.
    const users = page.locator("#fair-share-users");
    await expect(users.locator(`tr[data-name='${user.name}']`)).toBeVisible();
    expect(Number(await users.locator(`tr[data-name='${user.name}'] .usage`).textContent())).toBeGreaterThan(0);
    await shot(page, "admin-jobs-fair-share");
  });

  test("another user neither sees nor cancels the job", async ({ browser }) => {
    const [, jobs] = await api("GET", "/api/v1/jobs", userToken);
    const id = Math.max(...jobs.filter((j) => j.name === "portal-job").map((j) => j.id));
    const other = { name: "webjobs2", password: "Jobs2-pw-2026" };
    pamUser(other.name, other.password);
    const context = await browser.newContext();
    const page = await context.newPage();
    await login(page, other.name, other.password);
    const response = await page.goto(`/jobs/${id}`);
    expect(response.status()).toBe(404);
    const log = await page.goto(`/jobs/${id}/tasks/run/0/log`);
    expect(log.status()).toBe(404);
    await page.goto("/jobs");
    await expect(page.locator(`tr[data-job='${id}']`)).toHaveCount(0);
    await context.close();
  });
});
