/**
 * Ed25519 keys and signatures in minisign's text formats (docs/trust.md), through
 * node:crypto: public keys and `.minisig` signatures that `minisign -V` verifies. The secret
 * key is stored as PKCS#8 PEM (openssl reads it) rather than minisign's secret-key format,
 * whose checksum needs BLAKE2b-256, which node:crypto does not offer.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';

import { OsfarmError } from '../base/errors.js';

/** An Ed25519 public key with its 8-byte minisign key id. */
export interface PublicKey {
  /** The key id as minisign prints it: 16 uppercase hex digits (the little-endian u64). */
  keyId: string;
  /** The 32-byte Ed25519 public key. */
  key: Buffer;
  /** The key's base64 line in minisign.pub (what `minisign -P` takes). */
  base64: string;
}

/** A signing key: the private half and its public key. */
export interface SecretKey {
  keyObject: KeyObject;
  publicKey: PublicKey;
}

/** A parsed `.minisig` file. */
export interface Signature {
  keyId: string;
  /** The signature over BLAKE2b-512(message) ("ED", prehashed). */
  signature: Buffer;
  trustedComment: string;
  /** The signature over `signature || trustedComment`. */
  globalSignature: Buffer;
}

const ALG_KEY = Buffer.from('Ed');
const ALG_PREHASHED = Buffer.from('ED');
/** The DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw 32-byte key follows it. */
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function keyIdHex(id: Buffer): string {
  return Buffer.from(id).reverse().toString('hex').toUpperCase();
}

function keyIdBytes(hex: string): Buffer {
  return Buffer.from(hex, 'hex').reverse();
}

/** The key id: the first 8 bytes of SHA-256 over the public key (minisign picks them at random; any 8 bytes do). */
function deriveKeyId(key: Buffer): Buffer {
  return createHash('sha256').update(key).digest().subarray(0, 8);
}

function publicKeyFromRaw(key: Buffer, id: Buffer): PublicKey {
  return { keyId: keyIdHex(id), key, base64: Buffer.concat([ALG_KEY, id, key]).toString('base64') };
}

function rawPublicKey(keyObject: KeyObject): Buffer {
  const der = createPublicKey(keyObject).export({ type: 'spki', format: 'der' });
  return Buffer.from(der.subarray(SPKI_PREFIX.length));
}

function publicKeyObject(pk: PublicKey): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, pk.key]), format: 'der', type: 'spki' });
}

/** A new Ed25519 key pair. */
export function generateSecretKey(): SecretKey {
  const { privateKey } = generateKeyPairSync('ed25519');
  const key = rawPublicKey(privateKey);
  return { keyObject: privateKey, publicKey: publicKeyFromRaw(key, deriveKeyId(key)) };
}

/** The secret key file's text: PKCS#8 PEM. */
export function formatSecretKey(sk: SecretKey): string {
  return sk.keyObject.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** Reads a secret key file written by formatSecretKey. */
export function parseSecretKey(text: string, source: string): SecretKey {
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey({ key: text, format: 'pem' });
  } catch (err) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${source} is not a PEM private key: restore it from a backup or make a new one with 'osfarm keys generate'`, { cause: err });
  }
  if (keyObject.asymmetricKeyType !== 'ed25519') {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${source} holds a ${keyObject.asymmetricKeyType} key; osfarm signs with Ed25519 keys ('osfarm keys generate')`);
  }
  const key = rawPublicKey(keyObject);
  return { keyObject, publicKey: publicKeyFromRaw(key, deriveKeyId(key)) };
}

/** minisign.pub text: an untrusted comment naming the key id, then the key's base64 line. */
export function formatPublicKey(pk: PublicKey): string {
  return `untrusted comment: minisign public key ${pk.keyId}\n${pk.base64}\n`;
}

/** Reads a minisign public key: a minisign.pub file's text, or its base64 line alone. */
export function parsePublicKey(text: string, source: string): PublicKey {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('untrusted comment:'));
  const raw = lines.length === 1 ? Buffer.from(lines[0]!, 'base64') : Buffer.alloc(0);
  if (raw.length !== 42 || !raw.subarray(0, 2).equals(ALG_KEY)) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `${source} is not a minisign Ed25519 public key (two lines: a comment and 'RW…' base64); export one with 'osfarm keys export'`);
  }
  return publicKeyFromRaw(Buffer.from(raw.subarray(10)), Buffer.from(raw.subarray(2, 10)));
}

function prehash(message: Buffer): Buffer {
  return createHash('blake2b512').update(message).digest();
}

/** Signs `message` (prehashed, as current minisign does) with a trusted comment (one line). */
export function signMessage(sk: SecretKey, message: Buffer, trustedComment: string): string {
  if (/[\r\n]/.test(trustedComment)) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'a trusted comment is one line');
  const signature = sign(null, prehash(message), sk.keyObject);
  const global = sign(null, Buffer.concat([signature, Buffer.from(trustedComment)]), sk.keyObject);
  const id = keyIdBytes(sk.publicKey.keyId);
  return [
    `untrusted comment: signature from osfarm secret key ${sk.publicKey.keyId}`,
    Buffer.concat([ALG_PREHASHED, id, signature]).toString('base64'),
    `trusted comment: ${trustedComment}`,
    global.toString('base64'),
    '',
  ].join('\n');
}

/** Parses a `.minisig` file; only prehashed ("ED") signatures are accepted. */
export function parseSignature(text: string, source: string): Signature {
  const lines = text.split(/\r?\n/);
  const bad = (why: string) => new OsfarmError('OSFARM_UNTRUSTED', `${source} is not a minisign signature (${why})`);
  if (lines.length < 4 || !lines[0]!.startsWith('untrusted comment:') || !lines[2]!.startsWith('trusted comment: ')) throw bad('expected four lines: comment, signature, trusted comment, global signature');
  const sig = Buffer.from(lines[1]!.trim(), 'base64');
  const global = Buffer.from(lines[3]!.trim(), 'base64');
  if (sig.length !== 74 || global.length !== 64) throw bad('wrong length');
  if (!sig.subarray(0, 2).equals(ALG_PREHASHED)) throw bad('not a prehashed Ed25519 signature ("ED")');
  return {
    keyId: keyIdHex(sig.subarray(2, 10)),
    signature: Buffer.from(sig.subarray(10)),
    trustedComment: lines[2]!.slice('trusted comment: '.length),
    globalSignature: global,
  };
}

/**
 * Checks `signature` over `message` against the keys given; returns the key that signed.
 * Throws OSFARM_UNTRUSTED when no given key has its id or the signature does not verify.
 */
export function verifyMessage(message: Buffer, signature: Signature, keys: readonly PublicKey[], source: string): PublicKey {
  const key = keys.find((k) => k.keyId === signature.keyId);
  if (!key) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source} is signed by key ${signature.keyId}, which is not among the trusted keys (${keys.map((k) => k.keyId).join(', ') || 'none'}); trust it with --trust KEYFILE if you should`);
  }
  const ko = publicKeyObject(key);
  if (!verify(null, prehash(message), ko, signature.signature)) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source}: bad signature by key ${key.keyId}: the signed file was altered (or the signature was)`);
  }
  if (!verify(null, Buffer.concat([signature.signature, Buffer.from(signature.trustedComment)]), ko, signature.globalSignature)) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source}: bad signature by key ${key.keyId} on its trusted comment`);
  }
  return key;
}
