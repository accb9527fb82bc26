// Drives the sluice console in Debian's Chromium (headless) with playwright-core, for
// the gateway's integration tests. One scenario per run:
//
//   node drive.mjs SCENARIO '{"url": "http://127.0.0.1:PORT", ...}'
//
// It prints progress lines (`step NAME`) and, last, one JSON line with what it saw; the
// Rust test asserts on that. A line `wait NAME` asks the test to do something (start a
// held statement) and answer `go` on stdin. Screenshots go to `shots` when given.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [scenario, argsJson] = process.argv.slice(2);
const args = JSON.parse(argsJson || "{}");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

function say(line) {
  process.stdout.write(line + "\n");
}

async function waitFor(name) {
  say(`wait ${name}`);
  const { value } = await lines.next();
  if (value !== "go") throw new Error(`expected go for ${name}, got ${value}`);
}

async function shot(page, name) {
  if (args.shots) await page.screenshot({ path: `${args.shots}/${name}.png`, fullPage: false });
}

async function signIn(page, user, password) {
  await page.goto(`${args.url}/console/sessions`);
  if (!page.url().endsWith("/console/login")) throw new Error(`not sent to sign-in: ${page.url()}`);
  await page.fill("input[name=user]", user);
  await page.fill("input[name=password]", password);
  await Promise.all([page.waitForURL("**/console/sessions"), page.click("button[type=submit]")]);
}

// Everything a statement could make the browser do, recorded instead of allowed.
function watch(page, seen) {
  seen.dialogs = [];
  seen.console_errors = [];
  page.on("dialog", async (d) => { seen.dialogs.push(d.message()); await d.dismiss(); });
  // Only the console's own pages count (the identity provider's are not ours).
  const ours = () => page.url().startsWith(args.url);
  page.on("console", (m) => { if (m.type() === "error" && ours()) seen.console_errors.push(m.text()); });
  page.on("pageerror", (e) => { if (ours()) seen.console_errors.push(String(e)); });
}

const visibleCount = (page) =>
  page.$$eval("#timeline > li.ev", (all) => all.filter((li) => getComputedStyle(li).display !== "none").length);

const scenarios = {
  // A reviewer: sign in, find a session by its statement text, replay it, then approve a
  // held statement that arrives in the live queue while the page is open.
  async reviewer(page) {
    const seen = {};
    watch(page, seen);
    await page.goto(`${args.url}/console/sessions`);
    await shot(page, "console-sign-in");
    await signIn(page, args.user, args.password);
    say("step signed-in");

    await page.fill("input[name=q]", args.search);
    await Promise.all([page.waitForURL("**/console/sessions?**"), page.click("form.filters button[type=submit]")]);
    seen.found = await page.$$eval("table.sessions tbody tr td:first-child a", (as) =>
      as.map((a) => a.getAttribute("href").split("/").pop()));
    await shot(page, "console-sessions");
    say("step searched");

    await Promise.all([page.waitForURL("**/console/sessions/*"), page.click("table.sessions tbody tr td:first-child a")]);
    seen.statements = await page.$$eval("#timeline pre.sql", (p) => p.map((e) => e.textContent));
    seen.scripts = await page.$$eval("script", (s) => s.map((e) => e.getAttribute("src")));
    seen.prompts = await page.$$eval("#timeline dd.prompt", (d) => d.map((e) => e.textContent));
    seen.events = await visibleCount(page);
    await page.click("#step");
    seen.after_one_step = await visibleCount(page);
    seen.position_after_step = await page.textContent("#replay-pos");
    await page.click("#step");
    seen.after_two_steps = await visibleCount(page);
    // Play, pause: nothing moves while paused.
    await page.click("#play");
    await page.click("#pause");
    seen.paused_at = await page.textContent("#replay-pos");
    await page.waitForTimeout(700);
    seen.still_paused_at = await page.textContent("#replay-pos");
    await page.selectOption("#speed", "16");
    await page.click("#play");
    await page.waitForFunction(() => document.getElementById("pause").disabled, null, { timeout: 20000 });
    seen.after_play = await visibleCount(page);
    seen.position_after_play = await page.textContent("#replay-pos");
    await page.click("#show-all");
    await page.evaluate(() => window.scrollTo(0, 0));
    await shot(page, "console-replay");
    say("step replayed");

    await page.goto(`${args.url}/console/reviews`);
    seen.queue_before = await page.$$eval("#review-queue article.review", (a) => a.length);
    await waitFor("held-statement");
    // No reload: the queue updates by itself.
    await page.waitForSelector("#review-queue article.review form.decide", { timeout: 20000 });
    const first = "#review-queue article.review:nth-of-type(1)";
    seen.review_statement = await page.textContent(`${first} pre.sql`);
    await page.fill(`${first} textarea[name=reason]`, args.reason);
    const approveAt = async () => (await page.locator(`${first} button.approve`).boundingBox()).y;
    seen.approve_y_before = await approveAt();
    // A second held statement arrives while the reviewer is about to click: it goes to
    // the end, nothing moves, and the reason typed (then left) stays.
    await page.hover(`${first} button.approve`);
    await waitFor("second-held-statement");
    await page.waitForFunction(() => document.querySelectorAll("#review-queue article.review").length === 2,
      null, { timeout: 20000 });
    await page.click("h1");
    await page.waitForTimeout(2500);
    seen.approve_y_after = await approveAt();
    seen.queue_statements = await page.$$eval("#review-queue article.review pre.sql", (p) => p.map((e) => e.textContent));
    seen.reason_kept = await page.inputValue(`${first} textarea[name=reason]`);
    await shot(page, "console-reviews");
    await Promise.all([
      page.waitForURL("**/console/reviews?done=**"),
      page.click(`${first} button.approve`),
    ]);
    seen.notice = await page.textContent("p.notice");
    say("step approved");

    // The other review is decided elsewhere: its card closes in place, at the same size.
    const other = "#review-queue article.review:nth-of-type(1)";
    await page.waitForSelector(`${other} button.approve`);
    const height = async () => (await page.locator(other).boundingBox()).height;
    seen.other_height_before = await height();
    await waitFor("deny-elsewhere");
    await page.waitForSelector(`${other}.gone`, { timeout: 20000 });
    seen.other_height_after = await height();
    seen.other_button = await page.textContent(`${other} button.approve`);

    await page.goto(`${args.url}/console/connections`);
    seen.connections = await page.$$eval("section.connection h2", (h) => h.map((e) => e.textContent));
    seen.snippet = await page.textContent("section.connection pre.snippet");
    await shot(page, "console-connections");
    return seen;
  },

  // An auditor: every page read-only; verifies the chain and exports a session.
  async auditor(page) {
    const seen = {};
    watch(page, seen);
    await signIn(page, args.user, args.password);
    seen.badge = await page.textContent("nav .badge");
    await page.goto(`${args.url}/console/reviews`);
    seen.decide_forms = await page.$$eval("form.decide", (f) => f.length);
    seen.reviews_listed = await page.$$eval("article.review", (a) => a.length);
    await page.goto(`${args.url}/console/audit`);
    await Promise.all([page.waitForURL("**/console/audit"), page.click("#verify form button[type=submit]")]);
    await page.waitForSelector("#verify-result.ok, #verify-result.bad", { timeout: 30000 });
    seen.verify = await page.textContent("#verify-result");
    await shot(page, "console-audit");
    const exported = await page.request.get(`${args.url}/console/audit/export?session=${args.session}`);
    seen.export_status = exported.status();
    seen.export_type = exported.headers()["content-type"];
    seen.export = await exported.text();
    return seen;
  },

  // Live follow: the page of an open session shows statements as they run, then its end.
  async follow(page) {
    const seen = {};
    watch(page, seen);
    await signIn(page, args.user, args.password);
    await page.goto(`${args.url}/console/sessions/${args.session}`);
    // Gone if anything reloads the page.
    await page.evaluate(() => { window.sluiceMark = 1; });
    seen.following = await page.textContent("#follow");
    const shows = (text) => page.waitForFunction(
      (t) => Array.from(document.querySelectorAll("#timeline pre.sql")).some((p) => p.textContent.includes(t)),
      text, { timeout: 20000 });
    await shows(args.first);
    await waitFor("next-statement");
    await shows(args.second);
    // The result arrives after the statement: the entry is completed in place.
    await page.waitForFunction(
      (t) => Array.from(document.querySelectorAll("#timeline li.ev")).some((li) =>
        li.querySelector("pre.sql")?.textContent.includes(t) && li.querySelector(".status.ok")),
      args.second, { timeout: 20000 });
    seen.entries_with_second = await page.$$eval("#timeline pre.sql", (p, t) =>
      p.filter((e) => e.textContent.includes(t)).length, args.second);
    await waitFor("close");
    await page.waitForFunction(() => document.getElementById("follow").textContent === "session ended",
      null, { timeout: 20000 });
    seen.last_kind = await page.$eval("#timeline > li.ev:last-child .kind", (e) => e.textContent);
    const entries = () => page.$$eval("#timeline > li.ev", (all) => all.map((li) => li.querySelector(".kind").textContent));
    seen.live_entries = await entries();
    seen.same_document = await page.evaluate(() => window.sluiceMark === 1);
    await page.reload();
    seen.reloaded_entries = await entries();
    return seen;
  },

  // A person signing in through the identity provider, in the browser.
  async sso(page) {
    const seen = {};
    watch(page, seen);
    await page.goto(`${args.url}/console/login`);
    await page.click("#sso");
    await page.waitForSelector("form#login input[name=login]");
    await page.fill("form#login input[name=login]", args.login);
    await Promise.all([page.waitForURL("**/console/sessions", { timeout: 20000 }), page.click("form#login button[type=submit]")]);
    seen.who = await page.textContent("nav .who");
    const cookies = await page.context().cookies();
    seen.cookie = cookies.filter((c) => c.name === "sluice_console").map((c) => ({
      httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path, secure: c.secure,
    }));
    await Promise.all([page.waitForURL("**/console/login"), page.click("form.logout button")]);
    await page.goto(`${args.url}/console/sessions`);
    seen.after_sign_out = new URL(page.url()).pathname;
    return seen;
  },
};

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const run = scenarios[scenario];
  if (!run) throw new Error(`unknown scenario ${scenario}`);
  const seen = await run(page);
  say(JSON.stringify(seen));
} catch (e) {
  failed = true;
  console.error(e && e.stack ? e.stack : String(e));
} finally {
  await browser.close();
  stdin.close();
}
process.exit(failed ? 1 : 0);
