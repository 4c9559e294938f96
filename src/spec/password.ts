/**
 * Root passwords: a plain password is turned into a SHA-512 crypt hash (`$6$…`) the moment a
 * spec is read, and only the hash travels on. The password goes to `openssl passwd -6 -stdin`
 * on its standard input, never in a process argument.
 */
import { createHash } from 'node:crypto';

import { invalidArgument, OsfarmError } from '../base/errors.js';
import { runSync } from '../host/process.js';

const CRYPT_ALPHABET = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** A crypt hash that can go into /etc/shadow: SHA-512 (`$6$`), SHA-256 (`$5$`), yescrypt (`$y$`), bcrypt (`$2b$`). */
export const CRYPT_HASH = /^\$(?:6|5|y|gy|7|2[aby])\$[./A-Za-z0-9$=,]+$/;

/**
 * A 16-character crypt salt derived from `material` (osfarm uses the canonical spec without
 * the password): equal specs get equal hashes, so builds stay reproducible, and the salt
 * says nothing about the password.
 */
export function deriveSalt(material: string): string {
  const digest = createHash('sha256').update('osfarm root password salt v1\n').update(material).digest();
  let salt = '';
  for (let i = 0; i < 16; i++) salt += CRYPT_ALPHABET[digest[i]! & 63];
  return salt;
}

/** SHA-512 crypt of `password` with `salt` (16 characters of [./0-9A-Za-z]), through openssl. */
export function sha512Crypt(password: string, salt: string): string {
  if (!/^[./0-9A-Za-z]{1,16}$/.test(salt)) throw invalidArgument('a crypt salt is 1 to 16 characters of [./0-9A-Za-z]');
  if (/[\n\r\0]/.test(password)) throw invalidArgument('a password cannot contain a line break or NUL');
  const out = runSync('openssl', ['passwd', '-6', '-salt', salt, '-stdin'], { input: `${password}\n`, errorCode: 'OSFARM_BUILD_FAILED', what: 'cannot hash the root password (openssl passwd -6)' });
  const hash = out.trim();
  if (!hash.startsWith(`$6$${salt}$`)) throw new OsfarmError('OSFARM_INTERNAL', 'openssl passwd -6 returned something that is not a SHA-512 crypt hash');
  return hash;
}

/** Whether `password` matches a `$6$` hash (recomputes it with the hash's salt). */
export function verifySha512Crypt(password: string, hash: string): boolean {
  const m = /^\$6\$(?:rounds=\d+\$)?([^$]{1,16})\$/.exec(hash);
  if (!m || hash.startsWith('$6$rounds=')) return false;
  return sha512Crypt(password, m[1]!) === hash;
}
