/**
 * Signed image manifests (docs/trust.md): what a repository vouches for when it builds or
 * accepts an image — the image digest, the SHA-256 of its index, its tags, the digests of
 * its spec and metadata, when and by what it was built. Written beside the image as
 * `manifest.json` and `manifest.json.minisig`, so `osfarm serve` and a static copy of the
 * repository publish them, and `minisign -Vm manifest.json -p signing.pub` checks them.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

import { OsfarmError } from '../base/errors.js';
import { SOFTWARE } from '../base/version.js';
import { writeFileAtomic } from '../host/fs.js';
import type { ImageEntry } from '../repo/index.js';
import { loadSigningKey } from './keys.js';
import { parseSignature, signMessage, verifyMessage, type PublicKey } from './minisign.js';

export const MANIFEST_FILE = 'manifest.json';
export const SIGNATURE_FILE = 'manifest.json.minisig';

/** The signed statement about one image. */
export interface ImageManifest {
  kind: 'osfarm-image-manifest';
  version: 1;
  /** The image digest (hex): the repository digest over every block digest. */
  digest: string;
  /** SHA-256 (hex) of the image's `index.osfi` as served. */
  indexSha256: string;
  size: number;
  blockCount: number;
  /** The image's first tag when signed (null: none); what a verifier older than tags checks. */
  name: string | null;
  /**
   * Every tag the image carried when signed. Absent in manifests signed before tags: then
   * `name` alone is the image's tag (`signedTags`).
   */
  tags?: string[];
  format: string;
  /** The build spec's digest (a built image's metadata carries it), else null. */
  specDigest: string | null;
  /** SHA-256 (hex) of the image's metadata as compact JSON, else null. */
  metaSha256: string | null;
  /** The stage chain's tags, for a built image. */
  stages: string[];
  /** When the image entered the repository that signed (ISO 8601). */
  built: string;
  /** The software that signed, e.g. "osfarm 0.2.0". */
  builder: string;
  /** The signing key's id. */
  keyId: string;
}

/** A manifest with the exact bytes and signature that were verified or written. */
export interface SignedManifest {
  manifest: ImageManifest;
  bytes: Buffer;
  signature: string;
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** What a manifest's `metaSha256` signs: SHA-256 of the metadata as compact JSON (null: none). */
export function metaDigest(meta: unknown): string | null {
  return meta === undefined ? null : sha256(JSON.stringify(meta));
}

function imageDir(entry: ImageEntry): string {
  return dirname(entry.path);
}

/** The manifest of `entry` as the repository's key would sign it now. */
export function describeImage(entry: ImageEntry, keyId: string): ImageManifest {
  const meta = entry.meta as { specDigest?: unknown; stages?: { tag?: unknown }[] } | undefined;
  return {
    kind: 'osfarm-image-manifest',
    version: 1,
    digest: entry.digest,
    indexSha256: sha256(readFileSync(entry.indexPath)),
    size: entry.size,
    blockCount: entry.blockCount,
    name: entry.tags[0] ?? null,
    tags: entry.tags,
    format: entry.format,
    specDigest: typeof meta?.specDigest === 'string' ? meta.specDigest : null,
    metaSha256: metaDigest(entry.meta),
    stages: Array.isArray(meta?.stages) ? meta.stages.map((s) => s.tag).filter((t): t is string => typeof t === 'string') : [],
    built: entry.added.toISOString(),
    builder: SOFTWARE,
    keyId,
  };
}

/**
 * Signs `entry` with the repository's key and writes its manifest beside it. Does nothing
 * (returns undefined) when the repository has no signing key. Call it whenever an image is
 * built, added, accepted, tagged or untagged: its tags are part of what is signed.
 */
export function signImage(repo: string, entry: ImageEntry): SignedManifest | undefined {
  const sk = loadSigningKey(repo);
  if (!sk) return undefined;
  const manifest = describeImage(entry, sk.publicKey.keyId);
  const bytes = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
  const signature = signMessage(sk, bytes, `timestamp:${Math.floor(Date.now() / 1000)}\tfile:${MANIFEST_FILE}\tdigest:${entry.digest}`);
  writeManifest(entry, { manifest, bytes, signature });
  return { manifest, bytes, signature };
}

/** Keeps a verified manifest (e.g. the origin's, after a pull) beside the image, so this repository republishes it. */
export function writeManifest(entry: ImageEntry, signed: SignedManifest): void {
  const dir = imageDir(entry);
  writeFileAtomic(join(dir, MANIFEST_FILE), signed.bytes.toString());
  writeFileAtomic(join(dir, SIGNATURE_FILE), signed.signature);
}

/** The manifest stored beside `entry`, if any (not verified). */
export function readManifest(entry: ImageEntry): SignedManifest | undefined {
  const dir = imageDir(entry);
  if (!existsSync(join(dir, MANIFEST_FILE)) || !existsSync(join(dir, SIGNATURE_FILE))) return undefined;
  const bytes = readFileSync(join(dir, MANIFEST_FILE));
  return { manifest: parseManifest(bytes, join(dir, MANIFEST_FILE)), bytes, signature: readFileSync(join(dir, SIGNATURE_FILE), 'utf8') };
}

function parseManifest(bytes: Buffer, source: string): ImageManifest {
  let m: Partial<ImageManifest>;
  try {
    m = JSON.parse(bytes.toString('utf8')) as Partial<ImageManifest>;
  } catch {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source} is not JSON`);
  }
  if (m.kind !== 'osfarm-image-manifest' || m.version !== 1 || typeof m.digest !== 'string' || typeof m.indexSha256 !== 'string') {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source} is not an osfarm image manifest (version 1)`);
  }
  return m as ImageManifest;
}

/**
 * Verifies a manifest's signature against `keys` and parses it. Throws OSFARM_UNTRUSTED for
 * a signature by an unknown key, a bad signature, or a manifest that is not one.
 */
export function verifyManifest(bytes: Buffer, signatureText: string, keys: readonly PublicKey[], source: string): SignedManifest & { key: PublicKey } {
  const key = verifyMessage(bytes, parseSignature(signatureText, `${source}.minisig`), keys, source);
  const manifest = parseManifest(bytes, source);
  if (manifest.keyId !== key.keyId) throw new OsfarmError('OSFARM_UNTRUSTED', `${source} names key ${manifest.keyId} but is signed by ${key.keyId}`);
  return { manifest, bytes, signature: signatureText, key };
}

/** The tags a manifest vouches for: its `tags`, or for one signed before tags, its `name`. */
export function signedTags(manifest: ImageManifest): string[] {
  if (Array.isArray(manifest.tags)) return manifest.tags.filter((t) => typeof t === 'string');
  return manifest.name === null || manifest.name === undefined ? [] : [manifest.name];
}

/** Checks that a fetched index is the one the manifest signs (before any block is assembled). */
export function checkIndex(manifest: ImageManifest, index: Buffer, source: string): void {
  const got = sha256(index);
  if (got !== manifest.indexSha256) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source} differs from the signed index (SHA-256 ${got}, signed ${manifest.indexSha256}): the server or a cache altered it; nothing was assembled`);
  }
}

/**
 * Checks that metadata that travelled with an image (meta.json's `metaJson` on a pull, the
 * push's IMAGE frame) is the metadata the manifest signs: spec, stage chain, build log and
 * packages are vouched for like the blocks.
 */
export function checkMeta(manifest: ImageManifest, meta: unknown, source: string): void {
  const got = metaDigest(meta);
  if (got !== manifest.metaSha256) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source}: the image's metadata differs from the signed metadata (SHA-256 ${got ?? 'none'}, signed ${manifest.metaSha256 ?? 'none'}); nothing was assembled`);
  }
}

/** What a receiver knows of a pushed image before its blocks arrive (the IMAGE frame). */
export interface PushedImage {
  /** Absent when the source hashes a file as it sends it (such an image has no manifest). */
  digest?: string;
  size: number;
  blockCount: number;
  /** The tags the frame gives the image (absent: a sender older than tags, which sends `name` only). */
  tags?: string[];
  name?: string;
  meta: unknown;
}

/**
 * The manifest a push carried, checked against what the IMAGE frame says. With `keys`
 * (the receiver requires signatures) an absent manifest, a bad signature, or one that does
 * not describe this image — digest, size, block count, tags, metadata — is OSFARM_UNTRUSTED,
 * before any block is accepted. Without keys it is only kept if it describes the image, so
 * the receiver republishes it for pulls to verify.
 */
export function checkPushed(text: string | undefined, signature: string | undefined, keys: readonly PublicKey[], image: PushedImage): SignedManifest | undefined {
  const source = 'the pushed manifest';
  if (text === undefined || signature === undefined) {
    if (!keys.length) return undefined;
    throw new OsfarmError('OSFARM_UNTRUSTED', `the image is not signed (the push carried no manifest); this receiver requires a signature by ${keys.map((k) => k.keyId).join(' or ')}`);
  }
  const bytes = Buffer.from(text, 'utf8');
  if (!keys.length) {
    let manifest: ImageManifest;
    try {
      manifest = parseManifest(bytes, source);
    } catch {
      return undefined;
    }
    return manifest.digest === image.digest ? { manifest, bytes, signature } : undefined;
  }
  const { manifest } = verifyManifest(bytes, signature, keys, source);
  const differs = (what: string, signed: unknown, got: unknown) => {
    if (signed !== got) throw new OsfarmError('OSFARM_UNTRUSTED', `${source} signs ${what} ${JSON.stringify(signed)}, the push says ${JSON.stringify(got ?? null)}: refused before any block`);
  };
  differs('image', manifest.digest, image.digest);
  differs('size', manifest.size, image.size);
  differs('block count', manifest.blockCount, image.blockCount);
  // The tags the push gives must be the signed ones (as a set); a sender older than tags
  // gives one name, which must be among them.
  const signedList = signedTags(manifest);
  const sorted = (l: readonly string[]) => JSON.stringify([...new Set(l)].sort());
  const given = image.tags ?? (image.name === undefined ? undefined : [image.name]);
  if (given !== undefined && (image.tags ? sorted(given) !== sorted(signedList) : !signedList.includes(given[0]!))) {
    throw new OsfarmError('OSFARM_UNTRUSTED', `${source} signs tags ${JSON.stringify(signedList)}, the push gives ${JSON.stringify(given)}: refused before any block`);
  }
  checkMeta(manifest, image.meta, source);
  return { manifest, bytes, signature };
}
