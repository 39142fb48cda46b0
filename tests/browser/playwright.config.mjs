// The portal's browser tests: Debian's Chromium (no downloaded browser), headless, one test at
// a time against the testbed's portal. Screenshots of every page land in DOCKLET_SHOTS.
import { defineConfig } from "@playwright/test";

export default defineConfig({
  testDir: ".",
  testMatch: "*.spec.mjs",
  timeout: 240_000,
  expect: { timeout: 20_000 },
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  outputDir: process.env.DOCKLET_RESULTS || "../../target/browser-results",
  use: {
    baseURL: process.env.DOCKLET_PORTAL || "https://portal.docklet.test:8000",
    headless: true,
    viewport: { width: 1280, height: 860 },
    screenshot: "only-on-failure",
    launchOptions: {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      // Chromium finds the site CA, as a site's users would have it, in $HOME/.pki/nssdb.
      env: { ...process.env, HOME: process.env.DOCKLET_BROWSER_HOME || process.env.HOME },
      // No connection anywhere but the testbed: no background services, updates or sync.
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        // Every user's workspace host (<user>.ws.docklet.test) leads to tb1, as a site's
        // wildcard DNS record would: /etc/hosts, which gives the portal's name, has no wildcards.
        `--host-resolver-rules=MAP *.ws.docklet.test ${process.env.DOCKLET_WORKSPACE_ADDRESS || "10.213.0.11"}`],
    },
  },
});
