/**
 * A repository's keys (docs/trust.md): its signing key in `keys/` and the public keys it
 * trusts in `trust/`. The secret key file is created with mode 0600 and never printed.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { OsfarmError } from '../base/errors.js';
import { writeFileAtomic } from '../host/fs.js';
import { formatPublicKey, formatSecretKey, generateSecretKey, parsePublicKey, parseSecretKey, type PublicKey, type SecretKey } from './minisign.js';

/** The signing key's files, relative to the repository. */
export const SECRET_KEY_FILE = join('keys', 'signing.key');
export const PUBLIC_KEY_FILE = join('keys', 'signing.pub');
/** The trust store: minisign public keys (`*.pub`) whose signatures pulls into this repository require. */
export const TRUST_DIR = 'trust';

export interface KeyInfo {
  /** 'signing': this repository's own key; 'trusted': a key in its trust store. */
  role: 'signing' | 'trusted';
  keyId: string;
  /** The minisign public key line (`minisign -P` takes it). */
  publicKey: string;
  /** The public key file. */
  path: string;
}

function requireRepository(repo: string): void {
  if (!existsSync(join(repo, 'osfarm-repo.json'))) {
    throw new OsfarmError('OSFARM_BAD_REPOSITORY', `${repo} is not a repository: create it first with 'osfarm repo init'`);
  }
}

/** Makes the repository's signing key. Refuses to replace one unless `force` (images signed by the old key stay signed by it). */
export function generateKeys(repo: string, options: { force?: boolean } = {}): KeyInfo {
  requireRepository(repo);
  const secretPath = join(repo, SECRET_KEY_FILE);
  if (existsSync(secretPath) && !options.force) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${repo} already has a signing key (${secretPath}); give --force to replace it (pulls that trust the old key will refuse images signed by the new one)`);
  }
  mkdirSync(join(repo, 'keys'), { recursive: true, mode: 0o700 });
  const sk = generateSecretKey();
  writeFileAtomic(secretPath, formatSecretKey(sk), 0o600);
  writeFileAtomic(join(repo, PUBLIC_KEY_FILE), formatPublicKey(sk.publicKey));
  return info('signing', sk.publicKey, join(repo, PUBLIC_KEY_FILE));
}

/** The repository's signing key, or undefined when it has none. Refuses a secret key readable by others. */
export function loadSigningKey(repo: string): SecretKey | undefined {
  const path = join(repo, SECRET_KEY_FILE);
  if (!existsSync(path)) return undefined;
  const mode = statSync(path).mode & 0o777;
  if (mode & 0o077) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${path} is readable by others (mode ${mode.toString(8)}): run 'chmod 600 ${path}' (and consider the key leaked)`);
  }
  return parseSecretKey(readFileSync(path, 'utf8'), path);
}

/** Reads a minisign public key file. */
export function readPublicKey(path: string): PublicKey {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new OsfarmError('OSFARM_NOT_FOUND', `cannot read the key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  return parsePublicKey(text, path);
}

function trustStore(repo: string): { path: string; key: PublicKey }[] {
  const dir = join(repo, TRUST_DIR);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((n) => n.endsWith('.pub'))
    .sort()
    .map((n) => ({ path: join(dir, n), key: readPublicKey(join(dir, n)) }));
}

/** The keys a pull into `repo` trusts: its trust store plus the given key files. */
export function trustedKeys(repo: string, files: readonly string[] = []): PublicKey[] {
  return [...trustStore(repo).map((t) => t.key), ...files.map(readPublicKey)];
}

/** Adds a public key to the repository's trust store (`trust/<KEYID>.pub`): pulls into it then require signatures. */
export function trustKey(repo: string, file: string): KeyInfo {
  requireRepository(repo);
  const key = readPublicKey(file);
  mkdirSync(join(repo, TRUST_DIR), { recursive: true });
  const path = join(repo, TRUST_DIR, `${key.keyId}.pub`);
  writeFileAtomic(path, formatPublicKey(key));
  return info('trusted', key, path);
}

/** The signing key (if any), then the trust store. */
export function listKeys(repo: string): KeyInfo[] {
  requireRepository(repo);
  const out: KeyInfo[] = [];
  const pub = join(repo, PUBLIC_KEY_FILE);
  if (existsSync(join(repo, SECRET_KEY_FILE))) {
    // The public half is derived from the secret key, so a damaged .pub cannot mislead.
    const sk = loadSigningKey(repo)!;
    out.push(info('signing', sk.publicKey, pub));
  }
  for (const t of trustStore(repo)) out.push(info('trusted', t.key, t.path));
  return out;
}

/** The signing key's public half in minisign.pub form. */
export function exportPublicKey(repo: string): { keyId: string; text: string } {
  requireRepository(repo);
  const sk = loadSigningKey(repo);
  if (!sk) throw new OsfarmError('OSFARM_NOT_FOUND', `${repo} has no signing key: make one with 'osfarm keys generate'`);
  return { keyId: sk.publicKey.keyId, text: formatPublicKey(sk.publicKey) };
}

function info(role: KeyInfo['role'], key: PublicKey, path: string): KeyInfo {
  return { role, keyId: key.keyId, publicKey: key.base64, path };
}

