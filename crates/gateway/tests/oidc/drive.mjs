// Browser-less user agent for sluice's OIDC integration tests (see README.md).
//
//   node drive.mjs code URL [LOGIN] [--stop-at PREFIX]... [--cookie NAME=VALUE]... [--dump-cookies FILE]
//   node drive.mjs device VERIFICATION_URI_COMPLETE LOGIN
//   node drive.mjs device VERIFICATION_URI USER_CODE LOGIN
//
// Exit codes: 0 success; 1 an HTTP 4xx/5xx response (code mode still prints the final
// URL/status/body on stdout); 2 usage errors, network errors or an unexpected page.
// Diagnostics go to stderr and name URLs by path only (query strings may hold codes).

import { writeFileSync } from 'node:fs';

const MAX_STEPS = 40;

class DriveError extends Error {
  constructor(message, exitCode = 2) {
    super(message);
    this.exitCode = exitCode;
  }
}

const where = (u) => {
  const url = new URL(u);
  return `${url.host}${url.pathname}`;
};

// ---------------------------------------------------------------------------
// Cookie jar: host:port -> name -> value (paths and domains ignored)
// ---------------------------------------------------------------------------

const jar = new Map();

function jarFor(hostPort) {
  if (!jar.has(hostPort)) jar.set(hostPort, new Map());
  return jar.get(hostPort);
}

function storeCookies(url, response) {
  const { host } = new URL(url);
  const cookies = jarFor(host);
  for (const line of response.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';');
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    let expired = false;
    for (const attr of attrs) {
      const [k, v = ''] = attr.split('=');
      const key = k.trim().toLowerCase();
      if (key === 'max-age' && Number(v.trim()) <= 0) expired = true;
      if (key === 'expires') {
        const t = Date.parse(v.trim());
        if (!Number.isNaN(t) && t <= Date.now()) expired = true;
      }
    }
    if (expired) cookies.delete(name);
    else cookies.set(name, value);
  }
}

function cookieHeader(url) {
  const cookies = jar.get(new URL(url).host);
  if (!cookies || !cookies.size) return undefined;
  return [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

async function request(method, url, form) {
  const headers = { 'user-agent': 'sluice-oidc-drive/1', accept: 'text/html,application/json;q=0.9,*/*;q=0.8' };
  const cookie = cookieHeader(url);
  if (cookie) headers.cookie = cookie;
  let body;
  if (form) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body, redirect: 'manual' });
  } catch (err) {
    throw new DriveError(`${method} ${where(url)}: ${err.cause?.message || err.message}`);
  }
  storeCookies(url, response);
  const text = await response.text();
  return { status: response.status, statusText: response.statusText, location: response.headers.get('location'), text, url };
}

const isRedirect = (s) => [301, 302, 303, 307, 308].includes(s);

// Issue a request and follow redirects until a non-redirect response, unless the next URL
// starts with one of stopAt (then return { stoppedAt }).
async function go(method, url, form, stopAt = []) {
  let steps = 0;
  for (;;) {
    if (stopAt.some((p) => url.startsWith(p))) return { stoppedAt: url };
    if (++steps > MAX_STEPS) throw new DriveError('too many redirects');
    const res = await request(method, url, form);
    if (!isRedirect(res.status)) return res;
    if (!res.location) throw new DriveError(`${res.status} from ${where(url)} without Location`);
    const next = new URL(res.location, url).href;
    if (res.status === 301 || res.status === 302 || res.status === 303) {
      method = 'GET';
      form = undefined;
    }
    url = next;
  }
}

// ---------------------------------------------------------------------------
// Minimal HTML form parsing
// ---------------------------------------------------------------------------

const decodeEntities = (s) => s
  .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16)))
  .replace(/&#(\d+);/g, (_, d) => String.fromCodePoint(Number(d)))
  .replace(/&quot;/g, '"')
  .replace(/&lt;/g, '<')
  .replace(/&gt;/g, '>')
  .replace(/&amp;/g, '&');

function attrs(tag) {
  const out = {};
  const re = /([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g;
  const inner = tag.replace(/^<\s*[a-zA-Z]+/, '').replace(/\/?>$/, '');
  for (const m of inner.matchAll(re)) {
    out[m[1].toLowerCase()] = decodeEntities(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return out;
}

function forms(html, baseUrl) {
  const out = [];
  for (const m of html.matchAll(/<form\b[^>]*>([\s\S]*?)<\/form>/gi)) {
    const a = attrs(m[0].match(/<form\b[^>]*>/i)[0]);
    const fields = [];
    for (const i of m[1].matchAll(/<input\b[^>]*>/gi)) {
      const ia = attrs(i[0]);
      if (ia.name) fields.push({ name: ia.name, value: ia.value ?? '', type: (ia.type || 'text').toLowerCase() });
    }
    out.push({
      id: a.id || '',
      method: (a.method || 'get').toUpperCase(),
      action: new URL(a.action || baseUrl, baseUrl).href,
      fields,
    });
  }
  return out;
}

const isLoginForm = (f) => /\/interaction\/[^/]+\/login$/.test(new URL(f.action).pathname);

function failOnError(res) {
  if (res.status >= 400) {
    const snippet = res.text.replace(/\s+/g, ' ').trim().slice(0, 300);
    throw new DriveError(`HTTP ${res.status} from ${where(res.url)}: ${snippet}`, 1);
  }
}

// ---------------------------------------------------------------------------
// code: authorization code flow
// ---------------------------------------------------------------------------

async function codeFlow(args) {
  const stopAt = [];
  const positional = [];
  let dumpCookies;
  const startCookies = [];
  for (let i = 0; i < args.length; i += 1) {
    if (args[i] === '--stop-at') stopAt.push(args[++i]);
    else if (args[i] === '--dump-cookies') dumpCookies = args[++i];
    else if (args[i] === '--cookie') startCookies.push(args[++i]);
    else positional.push(args[i]);
  }
  if (positional.length < 1 || positional.length > 2 || stopAt.includes(undefined)
    || startCookies.includes(undefined) || (dumpCookies === undefined && args.includes('--dump-cookies'))) {
    throw new DriveError('usage: drive.mjs code URL [LOGIN] [--stop-at PREFIX]... [--cookie NAME=VALUE]... [--dump-cookies FILE]');
  }
  const [startUrl, login] = positional;
  for (const c of startCookies) {
    const eq = c.indexOf('=');
    if (eq <= 0) throw new DriveError(`--cookie expects NAME=VALUE, got ${c}`);
    jarFor(new URL(startUrl).host).set(c.slice(0, eq), c.slice(eq + 1));
  }

  const finish = (code) => {
    if (dumpCookies) {
      const obj = Object.fromEntries([...jar].map(([h, m]) => [h, Object.fromEntries(m)]));
      writeFileSync(dumpCookies, `${JSON.stringify(obj)}\n`);
    }
    return code;
  };

  let res = await go('GET', startUrl, undefined, stopAt);
  let loggedIn = false;
  for (;;) {
    if (res.stoppedAt) {
      process.stdout.write(`${res.stoppedAt}\n`);
      return finish(0);
    }
    const login_ = res.status < 400 && forms(res.text, res.url).find(isLoginForm);
    if (!login_) break;
    if (loggedIn) throw new DriveError('login form shown again after logging in');
    if (!login) throw new DriveError(`${where(res.url)} shows the login form but no LOGIN was given`);
    loggedIn = true;
    res = await go('POST', login_.action, { login }, stopAt);
  }
  process.stdout.write(`${res.url}\nHTTP ${res.status} ${res.statusText}\n${res.text}`);
  if (res.status >= 400) {
    process.stderr.write(`drive.mjs: final response HTTP ${res.status} from ${where(res.url)}\n`);
    return finish(1);
  }
  return finish(0);
}

// ---------------------------------------------------------------------------
// device: device authorization grant, user side
// ---------------------------------------------------------------------------

async function deviceFlow(args) {
  let url; let userCode; let login;
  if (args.length === 2) [url, login] = args;
  else if (args.length === 3) [url, userCode, login] = args;
  else throw new DriveError('usage: drive.mjs device VERIFICATION_URI_COMPLETE LOGIN | device VERIFICATION_URI USER_CODE LOGIN');

  let res = await go('GET', url);
  const done = new Set();
  for (let step = 0; step < MAX_STEPS; step += 1) {
    failOnError(res);
    if (/<title>\s*Sign-in Success\s*<\/title>/i.test(res.text)) {
      process.stderr.write('drive.mjs: device flow confirmed\n');
      return 0;
    }
    const all = forms(res.text, res.url);
    const input = all.find((f) => f.id === 'op.deviceInputForm');
    const confirm = all.find((f) => f.id === 'op.deviceConfirmForm');
    const loginForm = all.find(isLoginForm);
    const fieldsOf = (f) => Object.fromEntries(f.fields.map((x) => [x.name, x.value]));

    const autoSubmit = /document\.forms\[0\]\.submit\(\)/.test(res.text) && all[0];

    if (autoSubmit && !input && !confirm && !loginForm) {
      // verification_uri_complete answers with a self-submitting form (xsrf + user_code).
      if (done.has('autosubmit')) throw new DriveError('self-submitting form shown twice');
      done.add('autosubmit');
      res = await go(autoSubmit.method, autoSubmit.action, fieldsOf(autoSubmit));
    } else if (confirm) {
      if (done.has('confirm')) throw new DriveError('confirm page shown twice');
      done.add('confirm');
      const data = fieldsOf(confirm); // xsrf, user_code, confirm=yes; never "abort"
      delete data.abort;
      res = await go(confirm.method, confirm.action, data);
    } else if (input) {
      if (done.has('input')) {
        const msg = res.text.match(/<p class="red">([\s\S]*?)<\/p>/)?.[1] || 'user code rejected';
        throw new DriveError(`device code not accepted: ${msg.trim()}`);
      }
      done.add('input');
      const data = fieldsOf(input);
      if (userCode !== undefined) data.user_code = userCode;
      if (!data.user_code) throw new DriveError('the device page asks for a user code but none was given');
      res = await go(input.method, input.action, data);
    } else if (loginForm) {
      if (done.has('login')) throw new DriveError('login form shown again after logging in');
      done.add('login');
      res = await go('POST', loginForm.action, { login });
    } else {
      const title = res.text.match(/<title>([\s\S]*?)<\/title>/i)?.[1]?.trim();
      throw new DriveError(`unexpected page at ${where(res.url)} (HTTP ${res.status}${title ? `, title "${title}"` : ''})`);
    }
  }
  throw new DriveError('too many steps');
}

// ---------------------------------------------------------------------------

const [mode, ...rest] = process.argv.slice(2);
try {
  let code;
  if (mode === 'code') code = await codeFlow(rest);
  else if (mode === 'device') code = await deviceFlow(rest);
  else throw new DriveError('usage: drive.mjs code URL [LOGIN] [--stop-at PREFIX] | drive.mjs device URI [USER_CODE] LOGIN');
  process.exitCode = code;
} catch (err) {
  if (!(err instanceof DriveError)) throw err;
  process.stderr.write(`drive.mjs: ${err.message}\n`);
  process.exitCode = err.exitCode;
}
