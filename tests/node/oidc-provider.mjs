// oidc-provider on 127.0.0.1 for ingest's credential tests (tests/servers/oidc_provider.py starts it; `make node-deps` installs it).
// argv: PORT; env OIDC_TEST_CONFIG: {"clients": [...], "access_token_ttl": seconds}.
// Refresh tokens rotate on every use and a consumed one revokes the whole grant (the provider's
// reuse detection); PKCE is required for every client; the dev login/consent pages are on.
import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2]);
const cfg = JSON.parse(process.env.OIDC_TEST_CONFIG || '{}');
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: cfg.clients || [],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  scopes: ['openid', 'offline_access', 'email', 'users.read'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub, email: `${sub}@example.test`, email_verified: true }; } };
  },
  ttl: {
    AccessToken: cfg.access_token_ttl || 60,
    AuthorizationCode: 60,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
    IdToken: 600,
    RefreshToken: 3600,
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  // A confidential client may introspect / revoke its own tokens (the default policy).
});
provider.proxy = false;

provider.on('server_error', (ctx, err) => { console.error('server_error', err); });

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// The test owns this process: when its stdin closes (the test ended or crashed), stop.
process.stdin.on('end', stop);
process.stdin.resume();
