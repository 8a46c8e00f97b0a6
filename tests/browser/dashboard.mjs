// Drives the dashboard in headless Chromium (run by tests/all/dashboard.rs, which prepares the jobs
// and checks Redis afterwards). Environment:
//   WASMQ_URL        the server                WASMQ_TOKEN      an admin token
//   WASMQ_OPEN_JOB   a succeeded job that failed twice first (its page is checked)
//   WASMQ_DEAD_JOB   a dead job to retry       WASMQ_LATER_JOB  a scheduled job to run now
//   WASMQ_HTML_JOB   a succeeded job whose args and result hold HTML with an onerror handler
//   WASMQ_TREE_JOB   a succeeded parent that awaited three sub-jobs
//   WASMQ_SHOTS      directory for screenshots CHROMIUM         the browser (/usr/bin/chromium)
// Prints one line per step; exits non-zero on the first failure.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const url = env("WASMQ_URL");
const shots = env("WASMQ_SHOTS");
const openJob = env("WASMQ_OPEN_JOB");
const deadJob = env("WASMQ_DEAD_JOB");
const laterJob = env("WASMQ_LATER_JOB");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // This machine has no internet: keep Chromium from trying to reach Google at start.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const step = (what) => console.log(`ok - ${what}`);
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));

  // Without a token the page asks for one; with it, the overview loads.
  await page.goto(url);
  await page.getByText("A token is needed").waitFor();
  step("without a token the dashboard asks for one");
  problems.length = 0; // the browser logs the 401s that led here
  await page.fill("#token", env("WASMQ_TOKEN"));
  await page.click("#token-form button[type=submit]");
  const row = page.locator('#queues tr[data-queue="default"]');
  await row.waitFor();
  assert.equal((await row.locator("td.dead").innerText()).trim(), "1");
  assert.equal((await row.locator("td.scheduled").innerText()).trim(), "1");
  // The chart has a line once the server has sampled twice; wait for the throughput bump.
  await page.waitForFunction(() => {
    const pts = document.querySelector(".chart polyline.succeeded")?.getAttribute("points") || "";
    return pts.split(" ").length >= 5;
  }, null, { timeout: 20000 });
  assert.equal(
    await page.locator("#durability").innerText(),
    "Redis: maxmemory-policy noeviction · appendonly yes · appendfsync always",
  );
  step("overview: queue counts, a throughput line, what Redis does with accepted jobs");
  await page.screenshot({ path: path.join(shots, "overview.png") });

  // Open a job from the succeeded list.
  await row.locator("td a").first().click();
  await page.locator('.tabs a[data-state="succeeded"]').click();
  await page.locator(`#jobs tr[data-job="${openJob}"] a`).first().click();
  await page.locator("#job-id", { hasText: openJob }).waitFor();
  assert.equal(await page.locator(".job-title .badge").innerText(), "succeeded");
  const failures = page.locator("#failures tbody tr");
  assert.equal(await failures.count(), 2, "both failed attempts are listed");
  assert.match(await failures.first().innerText(), /retry/);
  assert.match(await page.locator("pre.result").innerText(), /"succeeded_on_attempt": 3/);
  step("job page: state, result and each failed attempt");
  await page.screenshot({ path: path.join(shots, "job.png"), fullPage: true });

  // What a job was given and returned is shown as text: markup in it is not run.
  await page.goto(`${url}#/job/default/${env("WASMQ_HTML_JOB")}`);
  await page.locator("pre.result", { hasText: "<img" }).waitFor();
  assert.equal(await page.locator("main img").count(), 0, "no element made from job data");
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "no script from job data ran");
  step("job data is shown as text, never as markup");

  // A parent's page lists its sub-jobs with their states; a sub-job's page links back.
  const treeJob = env("WASMQ_TREE_JOB");
  await page.goto(`${url}#/job/default/${treeJob}`);
  await page.locator("#job-id", { hasText: treeJob }).waitFor();
  const kids = page.locator("#children li");
  await kids.first().waitFor();
  assert.equal(await kids.count(), 3, "three sub-jobs listed");
  for (const text of await kids.allInnerTexts()) assert.match(text, new RegExp(`^${treeJob}\\.chunk-\\d succeeded$`));
  await kids.first().locator("a").click();
  await page.locator("#job-id", { hasText: `${treeJob}.chunk-0` }).waitFor();
  assert.equal(await page.locator("#job-parent").innerText(), treeJob);
  step("job tree: a parent's sub-jobs with their states, and the way back");
  await page.screenshot({ path: path.join(shots, "tree.png"), fullPage: true });

  // Retry the dead job from the dead set.
  await page.click('nav a[data-nav="dead"]');
  const dead = page.locator(`#jobs tr[data-job="${deadJob}"]`);
  await dead.waitFor();
  await page.screenshot({ path: path.join(shots, "dead.png") });
  await dead.locator('button[data-action="retry"]').click();
  await page.locator("#flash.ok").waitFor();
  await page.getByText("No dead jobs on default.").waitFor();
  step("dead set: retried one job");

  // Run the scheduled job now.
  await page.locator('.tabs a[data-state="scheduled"]').click();
  const later = page.locator(`#jobs tr[data-job="${laterJob}"]`);
  await later.waitFor();
  await later.locator('button[data-action="run-now"]').click();
  await page.getByText("No scheduled jobs on default.").waitFor();
  step("scheduled: ran one job now");

  // The other pages render their tables.
  await page.click('nav a[data-nav="modules"]');
  await page.locator("#modules tbody tr").first().waitFor();
  await page.click('nav a[data-nav="workers"]');
  await page.locator("#workers tbody tr").first().waitFor();
  await page.click('nav a[data-nav="cron"]');
  await page.locator("#cron-form").waitFor();
  step("modules, workers and cron pages");

  assert.deepEqual(problems, [], "no script errors in the page");
} finally {
  await browser.close();
}
