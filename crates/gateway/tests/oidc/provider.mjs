// Loopback OpenID Connect provider for sluice's integration tests.
//
// Run: OIDC_CLIENT_SECRET=... OIDC_REDIRECT_URIS=http://127.0.0.1:N/auth/oidc/callback node provider.mjs
// Prints exactly one JSON line to stdout once listening:
//   {"issuer":"http://127.0.0.1:PORT","admin":"http://127.0.0.1:PORT/test"}
// and nothing else to stdout afterwards (diagnostics go to stderr, never secrets or tokens).
// Exits when stdin reaches EOF (the parent test process went away) and on SIGTERM/SIGINT.
// See README.md for the full contract.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

// oidc-provider prints its "NOTICE" lines with console.info (stdout). stdout belongs to the
// one-line handshake, so route every console method to stderr.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const log = (...args) => console.error('[oidc-test-provider]', ...args);

function fail(msg) {
  log(`fatal: ${msg}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------
// Configuration from the environment
// ---------------------------------------------------------------------------

const PORT = Number(process.env.OIDC_PORT ?? '0');
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) fail('OIDC_PORT must be an integer 0..65535');
const CLIENT_ID = process.env.OIDC_CLIENT_ID || 'sluice';
const CLIENT_SECRET = process.env.OIDC_CLIENT_SECRET;
if (!CLIENT_SECRET) fail('OIDC_CLIENT_SECRET is required');
const REDIRECT_URIS = (process.env.OIDC_REDIRECT_URIS || '').split(',').map((s) => s.trim()).filter(Boolean);
if (!REDIRECT_URIS.length) fail('OIDC_REDIRECT_URIS is required (comma-separated)');
// Refresh-token rotation: on by default (every refresh returns a new refresh_token and the old
// one becomes invalid). OIDC_ROTATE_REFRESH_TOKENS=0 keeps returning the same refresh_token.
const ROTATE_REFRESH = !['0', 'false', 'no'].includes((process.env.OIDC_ROTATE_REFRESH_TOKENS || '1').toLowerCase());

// ---------------------------------------------------------------------------
// Accounts (in memory, mutable through POST /test/accounts/NAME)
// ---------------------------------------------------------------------------

const accounts = new Map([
  ['alice', { email: 'alice@example.com', name: 'Alice Example', groups: ['idp-engineers', 'everyone'] }],
  ['bob', { email: 'bob@example.com', name: 'Bob Example', groups: ['idp-auditors'] }],
  ['carol', { email: 'carol@example.com', groups: [] }],
]);

function accountClaims(sub) {
  const a = accounts.get(sub);
  if (!a) return undefined;
  const claims = { sub, email: a.email, email_verified: true, groups: [...a.groups] };
  if (a.name !== undefined) claims.name = a.name;
  return claims;
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

function newRsaKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return privateKey;
}

const providerKey = newRsaKey();
const providerJwk = providerKey.export({ format: 'jwk' });
const providerKid = crypto.createHash('sha256').update(providerJwk.n).digest('base64url').slice(0, 16);
const rogueKey = newRsaKey();

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

const RSA_ALGS = {
  RS256: { hash: 'sha256' },
  RS384: { hash: 'sha384' },
  RS512: { hash: 'sha512' },
  PS256: { hash: 'sha256', pss: true },
  PS384: { hash: 'sha384', pss: true },
  PS512: { hash: 'sha512', pss: true },
};

function signJwt(mode, headerOverrides, claims) {
  let header;
  if (mode === 'none') {
    header = { alg: 'none', ...headerOverrides };
  } else {
    // Same header shape as the provider's own ID tokens.
    header = { alg: 'RS256', typ: 'JWT', kid: providerKid, ...headerOverrides };
  }
  // A header member set to null is removed (e.g. {"kid": null} for a token without kid).
  for (const [k, v] of Object.entries(header)) if (v === null) delete header[k];
  const input = `${b64url(header)}.${b64url(claims)}`;
  if (mode === 'none') return `${input}.`;
  const key = mode === 'provider' ? providerKey : rogueKey;
  // Sign with the header's alg when it is an RSA algorithm; for any other alg value the token is
  // still signed RS256 (so the header lies about the algorithm).
  const { hash, pss } = RSA_ALGS[header.alg] || RSA_ALGS.RS256;
  const sig = crypto.sign(hash, Buffer.from(input), pss
    ? { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: crypto.constants.RSA_PSS_SALTLEN_DIGEST }
    : key);
  return `${input}.${sig.toString('base64url')}`;
}

// ---------------------------------------------------------------------------
// Small HTTP helpers for the custom routes
// ---------------------------------------------------------------------------

const MAX_BODY = 64 * 1024;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function readForm(req) {
  return new URLSearchParams(await readBody(req));
}

async function readJson(req) {
  const text = await readBody(req);
  try {
    const v = JSON.parse(text || '{}');
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch {
    throw Object.assign(new Error('body must be a JSON object'), { status: 400 });
  }
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}
const sendText = (res, status, text) => send(res, status, 'text/plain; charset=utf-8', `${text}\n`);
const sendJson = (res, status, obj) => send(res, status, 'application/json', JSON.stringify(obj));

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

// ---------------------------------------------------------------------------
// Interactions: login + consent, both completed without any consent screen
// ---------------------------------------------------------------------------

let provider; // set once the port is known

async function grantEverything(details, accountId) {
  const { params, prompt } = details;
  const clientId = params.client_id;
  let grant;
  if (details.grantId) grant = await provider.Grant.find(details.grantId);
  // An existing grant belongs to the session's account; a different login gets a fresh grant.
  if (!grant || grant.accountId !== accountId) grant = new provider.Grant({ accountId, clientId });

  if (params.scope) grant.addOIDCScope(String(params.scope));
  const claims = new Set(prompt.details?.missingOIDCClaims || []);
  if (params.claims) {
    try {
      const parsed = typeof params.claims === 'string' ? JSON.parse(params.claims) : params.claims;
      for (const part of ['id_token', 'userinfo']) {
        for (const name of Object.keys(parsed?.[part] || {})) claims.add(name);
      }
    } catch { /* the provider already rejected malformed claims */ }
  }
  if (claims.size) grant.addOIDCClaims([...claims]);
  for (const [indicator, scopes] of Object.entries(prompt.details?.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

async function finishAs(req, res, details, accountId) {
  const grantId = await grantEverything(details, accountId);
  const result = { consent: { grantId } };
  if (details.prompt.name === 'login' || !details.session?.accountId) {
    result.login = { accountId };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

function loginForm(uid, error) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign-in</title></head>
<body>
<h1>Sign-in</h1>
${error ? `<p class="error">${escapeHtml(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${encodeURIComponent(uid)}/login">
<input type="text" name="login" placeholder="alice" autofocus>
<button type="submit">Sign in</button>
</form>
</body></html>
`;
}

async function interactionRoute(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return sendText(res, 404, 'not found');
  const uid = decodeURIComponent(m[1]);

  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return sendText(res, 400, `interaction not found or expired (${err.name || 'error'})`);
  }
  if (details.uid !== uid) return sendText(res, 400, 'interaction uid does not match the interaction cookie');

  if (!m[2]) {
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendText(res, 405, 'method not allowed');
    const { prompt, params, session } = details;
    if (prompt.name === 'consent' && session?.accountId && accounts.has(session.accountId)) {
      return finishAs(req, res, details, session.accountId);
    }
    const hint = typeof params.login_hint === 'string' ? params.login_hint : undefined;
    if (hint && accounts.has(hint)) {
      return finishAs(req, res, details, hint);
    }
    return send(res, 200, 'text/html; charset=utf-8', loginForm(uid));
  }

  if (req.method !== 'POST') return sendText(res, 405, 'method not allowed');
  const form = await readForm(req);
  const login = form.get('login') || '';
  if (!accounts.has(login)) return sendText(res, 400, `unknown login: ${JSON.stringify(login)}`);
  return finishAs(req, res, details, login);
}

// ---------------------------------------------------------------------------
// Test admin endpoints (/test/...)
// ---------------------------------------------------------------------------

async function testRoute(req, res, url) {
  const acct = url.pathname.match(/^\/test\/accounts\/([^/]+)$/);
  if (acct) {
    const name = decodeURIComponent(acct[1]);
    const a = accounts.get(name);
    if (!a) return sendJson(res, 404, { error: `unknown account ${name}` });
    if (req.method === 'GET') return sendJson(res, 200, accountClaims(name));
    if (req.method !== 'POST') return sendText(res, 405, 'method not allowed');
    const body = await readJson(req);
    if (!Array.isArray(body.groups) || !body.groups.every((g) => typeof g === 'string')) {
      return sendJson(res, 400, { error: 'groups must be an array of strings' });
    }
    a.groups = [...body.groups];
    if (typeof body.email === 'string') a.email = body.email;
    if (typeof body.name === 'string') a.name = body.name;
    return sendJson(res, 200, accountClaims(name));
  }

  if (url.pathname === '/test/sign') {
    if (req.method !== 'POST') return sendText(res, 405, 'method not allowed');
    const body = await readJson(req);
    const key = body.key ?? 'provider';
    if (!['provider', 'rogue', 'none'].includes(key)) {
      return sendJson(res, 400, { error: 'key must be "provider", "rogue" or "none"' });
    }
    const header = body.header ?? {};
    const claims = body.claims ?? {};
    if (typeof header !== 'object' || Array.isArray(header) || typeof claims !== 'object' || Array.isArray(claims)) {
      return sendJson(res, 400, { error: 'header and claims must be JSON objects' });
    }
    return sendJson(res, 200, { jwt: signJwt(key, header, claims) });
  }

  return sendText(res, 404, 'not found');
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

let providerCallback;

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  try {
    if (url.pathname.startsWith('/interaction/')) return await interactionRoute(req, res, url);
    if (url.pathname === '/test' || url.pathname.startsWith('/test/')) return await testRoute(req, res, url);
    return providerCallback(req, res);
  } catch (err) {
    log(`error handling ${req.method} ${url.pathname}: ${err.message}`);
    if (!res.headersSent) sendText(res, err.status || 500, err.status ? err.message : 'internal error');
    else res.destroy();
  }
});

server.listen(PORT, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      redirect_uris: REDIRECT_URIS,
      response_types: ['code'],
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      // Registered as client_secret_basic; oidc-provider accepts client_secret_post for it too.
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    }],
    jwks: { keys: [{ ...providerJwk, kid: providerKid, alg: 'RS256', use: 'sig' }] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false,
    findAccount: async (_ctx, sub) => {
      if (!accounts.has(sub)) return undefined;
      return { accountId: sub, claims: async () => accountClaims(sub) };
    },
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      claimsParameter: { enabled: true },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    pkce: { methods: ['S256'], required: () => true },
    // Always hand out refresh tokens to clients allowed to use them, for every grant
    // (authorization_code and device_code), without the offline_access + prompt=consent dance.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    rotateRefreshToken: ROTATE_REFRESH,
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      DeviceCode: 600,
      IdToken: 3600,
      Interaction: 3600,
      Grant: 14 * 24 * 3600,
      RefreshToken: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'text/plain; charset=utf-8';
      ctx.body = `${out.error}: ${out.error_description || ''}\n`;
    },
  });

  // Diagnostics for the test log: error codes and descriptions only, never tokens or secrets.
  for (const ev of ['server_error', 'authorization.error', 'grant.error', 'device_authorization.error',
    'introspection.error', 'revocation.error', 'userinfo.error', 'end_session.error', 'discovery.error',
    'jwks.error', 'check_session.error', 'interaction.error']) {
    provider.on(ev, (ctx, err) => {
      const e = err || ctx;
      if (e?.error === 'authorization_pending' || e?.error === 'slow_down') return;
      log(`${ev}: ${e?.error || e?.name || 'error'}${e?.error_description ? ` (${e.error_description})` : ''}${
        e?.error_detail ? ` [${e.error_detail}]` : ''}${
        ev === 'server_error' && e?.stack ? `\n${e.stack}` : ''}`);
    });
  }

  providerCallback = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, admin: `${issuer}/test` })}\n`);
  log(`listening on ${issuer} (client_id=${CLIENT_ID}, rotate_refresh=${ROTATE_REFRESH})`);
});

server.on('error', (err) => fail(`listen: ${err.message}`));

// ---------------------------------------------------------------------------
// Lifetime: stdin EOF (parent gone) or SIGTERM/SIGINT end the process.
// ---------------------------------------------------------------------------

function shutdown(why) {
  log(`exiting (${why})`);
  process.exit(0);
}
const STDIN_EOF = 'stdin closed; a parent must spawn this with a piped stdin and keep it open';
process.stdin.on('end', () => shutdown(STDIN_EOF));
process.stdin.on('close', () => shutdown(STDIN_EOF));
process.stdin.on('error', () => shutdown('stdin error'));
process.stdin.resume();
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGHUP', () => shutdown('SIGHUP'));
