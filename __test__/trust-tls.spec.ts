/**
 * Encrypted push and serve (docs/trust.md): TLS receivers with the certificate pinned by
 * fingerprint or checked against a CA (certificates made with openssl at test time), a
 * wrong pin refused before one byte of the protocol is sent, HTTPS serve, and the CLI's
 * "TLS or --insecure" rule.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createServer as createTlsServer } from 'node:tls';

import type { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { push } from '../src/transfer/push/push.js';
import { Receiver } from '../src/transfer/push/receive.js';
import { certificateFingerprint } from '../src/trust/tls.js';
import { cliJson, cliJsonAsync, pseudoRandom, tempDir } from './helpers/tmp.js';

const CLI_MAIN = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');
const TOKEN = 'trust-tls-test-token';

interface Pki {
  dir: string;
  ca: string;
  /** Signed by the CA, for IP 127.0.0.1. */
  cert: string;
  key: string;
  /** Self-signed, for IP 127.0.0.1: not under the CA. */
  selfCert: string;
  selfKey: string;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

/** A test CA, a server certificate it signs, and a self-signed one (P-256, one day). */
function pki(t: ExecutionContext): Pki {
  const dir = tempDir(t, 'osfarm-tls-');
  const p = (n: string) => join(dir, n);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '1', '-subj', '/CN=osfarm test CA']);
  openssl(['req', ...ec, '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', '/CN=osfarm test receiver']);
  writeFileSync(p('ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  openssl(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial', '-out', p('server.pem'), '-days', '1', '-extfile', p('ext.cnf')]);
  openssl(['req', '-x509', ...ec, '-keyout', p('self.key'), '-out', p('self.pem'), '-days', '1', '-subj', '/CN=osfarm impostor', '-addext', 'subjectAltName=IP:127.0.0.1']);
  return { dir, ca: p('ca.pem'), cert: p('server.pem'), key: p('server.key'), selfCert: p('self.pem'), selfKey: p('self.key') };
}

function image(t: ExecutionContext, seed: number): string {
  const path = join(tempDir(t), 'img.raw');
  writeFileSync(path, pseudoRandom(3 << 20, seed));
  return path;
}

test('push over TLS with the pinned fingerprint or the CA arrives intact; the listening event carries the fingerprint', async (t) => {
  const k = pki(t);
  const events: { type: string; tlsFingerprint?: string }[] = [];
  const repo = join(tempDir(t), 'rx');
  const receiver = new Receiver({ repo, token: TOKEN, tls: { cert: readFileSync(k.cert), key: readFileSync(k.key) }, onEvent: (e) => events.push(e) });
  const a = await receiver.listen('127.0.0.1', 0);
  t.teardown(() => receiver.close());
  const fingerprint = certificateFingerprint(readFileSync(k.cert));
  t.is(events.find((e) => e.type === 'listening')?.tlsFingerprint, fingerprint);

  const img = image(t, 1);
  const pinned = await push(img, `127.0.0.1:${a.port}`, { token: TOKEN, name: 'pinned', tls: { fingerprint: fingerprint.replace(/:/g, '').toLowerCase() } });
  t.deepEqual(readFileSync(Repository.open(repo).resolve('pinned').path), readFileSync(img));
  const img2 = image(t, 2);
  const byCa = await push(img2, `127.0.0.1:${a.port}`, { token: TOKEN, name: 'ca', tls: { ca: readFileSync(k.ca) } });
  t.not(byCa.digest, pinned.digest);
  t.deepEqual(readFileSync(Repository.open(repo).resolve('ca').path), readFileSync(img2));
  // TLS really is on the wire: a plain-TCP push to it fails.
  const plain = (await t.throwsAsync(push(img, `127.0.0.1:${a.port}`, { token: TOKEN, idleTimeoutMs: 3000, connectTimeoutMs: 3000 }))) as OsfarmError;
  t.truthy(plain.code);
});

test('a wrong pinned fingerprint, or a certificate the CA did not sign, is refused before any protocol byte is sent', async (t) => {
  const k = pki(t);
  // An impostor with a certificate of its own that records every byte it gets after the handshake.
  let received = 0;
  let connections = 0;
  const impostor = createTlsServer({ cert: readFileSync(k.selfCert), key: readFileSync(k.selfKey) }, (s) => {
    s.on('data', (d: Buffer) => (received += d.length));
    s.on('error', () => {});
  });
  impostor.on('connection', () => connections++);
  impostor.on('tlsClientError', () => {});
  await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => impostor.close(() => r())));
  const address = `127.0.0.1:${(impostor.address() as AddressInfo).port}`;
  const img = image(t, 3);
  const genuine = certificateFingerprint(readFileSync(k.cert));

  const pin = (await t.throwsAsync(push(img, address, { token: TOKEN, tls: { fingerprint: genuine } }))) as OsfarmError;
  t.is(pin.code, 'OSFARM_UNAUTHORIZED');
  t.regex(pin.message, /not the pinned/);
  const ca = (await t.throwsAsync(push(img, address, { token: TOKEN, tls: { ca: readFileSync(k.ca) } }))) as OsfarmError;
  t.is(ca.code, 'OSFARM_UNAUTHORIZED');
  t.regex(ca.message, /not trusted/);
  await new Promise((r) => setTimeout(r, 200));
  t.is(connections, 2, 'both pushes reached the impostor');
  t.is(received, 0, 'no magic, HELLO or token proof reached the impostor');

  const bad = (await t.throwsAsync(push(img, address, { token: TOKEN, tls: { fingerprint: 'abc' } }))) as OsfarmError;
  t.is(bad.code, 'OSFARM_INVALID_ARGUMENT');
});

test('CLI: receive --tls-cert/--tls-key prints the fingerprint; push --tls-fingerprint works; TLS or --insecure is required', async (t) => {
  const k = pki(t);
  const repo = join(tempDir(t), 'rx');
  const env = { ...process.env, OSFARM_TOKEN: TOKEN };
  const noTls = cliJson(['push', image(t, 4), '127.0.0.1:9'], { OSFARM_TOKEN: TOKEN });
  t.is(noTls.result.error.code, 'OSFARM_INVALID_ARGUMENT');
  t.regex(noTls.result.error.message, /--tls-fingerprint .*--insecure/);

  const child = spawn(process.execPath, ['--import', 'tsx', CLI_MAIN, '--json', '--repo', repo, 'receive', '--listen', '127.0.0.1:0', '--tls-cert', k.cert, '--tls-key', k.key], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => child.kill('SIGKILL'));
  let listening: { port: number; tlsFingerprint: string } | undefined;
  for await (const line of createInterface({ input: child.stdout! })) {
    const e = JSON.parse(line) as { type?: string; port: number; tlsFingerprint: string };
    if (e.type === 'listening') {
      listening = e;
      break;
    }
  }
  t.is(listening?.tlsFingerprint, certificateFingerprint(readFileSync(k.cert)));
  const img = image(t, 5);
  const r = await cliJsonAsync(['push', img, `127.0.0.1:${listening!.port}`, '--name', 'cli', '--tls-fingerprint', listening!.tlsFingerprint], { OSFARM_TOKEN: TOKEN });
  t.is(r.status, 0, r.stderr);
  t.is(r.result.blockCount, (3 << 20) / 4096);
});

test('serve --tls-cert/--tls-key: HTTPS pull with the CA in NODE_EXTRA_CA_CERTS; serve without TLS needs --insecure', async (t) => {
  const k = pki(t);
  const origin = join(tempDir(t), 'origin');
  Repository.init(origin).addSync(image(t, 6), { name: 'app' });
  const refused = cliJson(['--repo', origin, 'serve', '--listen', '127.0.0.1:0']);
  t.is(refused.result.error.code, 'OSFARM_INVALID_ARGUMENT');
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CLI_MAIN, '--json', '--repo', origin, 'serve', '--listen', '127.0.0.1:0', '--tls-cert', k.cert, '--tls-key', k.key, '--token-file', join(k.dir, 'web-token')],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  let port = 0;
  for await (const line of createInterface({ input: child.stdout! })) {
    const e = JSON.parse(line) as { type?: string; port: number };
    if (e.type === 'listening') {
      port = e.port;
      break;
    }
  }
  const receiver = join(tempDir(t), 'receiver');
  const pulled = await cliJsonAsync(['pull', `https://127.0.0.1:${port}/images/app`, '--repo', receiver], { NODE_EXTRA_CA_CERTS: k.ca });
  t.is(pulled.status, 0, pulled.stderr);
  t.is(pulled.result.name, 'app');
  // Plain HTTP to the HTTPS port gets nothing useful.
  const plain = await cliJsonAsync(['pull', `http://127.0.0.1:${port}/images/app`, '--repo', receiver, '--retries', '0']);
  t.not(plain.status, 0);
});
