/**
 * Images by the request that made them: every built image keeps its spec (canonical JSON
 * and XML) and its request checksum (the spec digest) in its repository metadata, so a
 * request already answered is found without building anything.
 */
import { existsSync } from 'node:fs';

import { OsfarmError } from '../base/errors.js';
import type { OutputFormat } from '../spec/distros.js';
import type { CanonicalSpec } from '../spec/spec.js';
import { type ImageEntry, Repository } from '../repo/index.js';

export const BUILD_META_KIND = 'osfarm-build';

/** What the builder records with each image it adds (ImageEntry.meta). */
export interface BuildMeta {
  kind: typeof BUILD_META_KIND;
  builder: string;
  /** When it was built (ISO 8601; builds since 0.1 — older images lack it). */
  built?: string;
  format: OutputFormat;
  /** The request checksum: sha256 of the canonical spec (parents included). */
  specDigest: string;
  spec: CanonicalSpec;
  /** The spec as XML; reading it back gives the same checksum. */
  specXml?: string;
  /** The stage chain the image was packed from, core first. */
  stages?: { tag: string; label: string }[];
  backend: string;
  cow?: string;
  sourceDateEpoch: number | null;
  buildLog?: { path: string; tail: string };
  /** The packages installed in the image (builds since 0.1: older images lack it). */
  installed?: InstalledPackage[];
}

/** One installed package as the builder read it from the tree's package database. */
export interface InstalledPackage {
  name: string;
  version: string;
  /** dpkg's Architecture ("all" for architecture-independent) or rpm's ARCH. */
  arch?: string;
  /** The source package it was built from, and that source's version. */
  source?: string;
  sourceVersion?: string;
}

/** The build metadata of an image, or null for images osfarm did not build. */
export function buildMeta(entry: ImageEntry): BuildMeta | null {
  const m = entry.meta as Partial<BuildMeta> | undefined;
  return m && typeof m === 'object' && m.kind === BUILD_META_KIND && typeof m.specDigest === 'string' ? (m as BuildMeta) : null;
}

/** An image's build metadata, or OSFARM_NOT_FOUND saying it has no `what` (it was not built by osfarm build). */
export function requireBuildMeta(entry: ImageEntry, what = 'spec'): BuildMeta {
  const meta = buildMeta(entry);
  if (!meta) throw new OsfarmError('OSFARM_NOT_FOUND', `image ${entry.name ?? entry.digest.slice(0, 16)} has no ${what}: it was not built by osfarm build (it was added with osfarm repo add, or received)`);
  return meta;
}

/** A repository: its directory, or one already open. */
export type RepositoryRef = string | Repository;

/** Opens a repository for reading (one already open is returned as it is); null if there is none at `path` yet. */
export function openIfExists(repo: RepositoryRef): Repository | null {
  if (repo instanceof Repository) return repo;
  if (!existsSync(repo)) return null;
  return Repository.open(repo);
}

/** Images built from the request with this checksum (every format, every SOURCE_DATE_EPOCH), oldest first. */
export function imagesOfRequest(repo: Repository, specDigest: string): ImageEntry[] {
  return repo.list().filter((e) => buildMeta(e)?.specDigest === specDigest);
}

/**
 * The images answering a build request, one per wanted format, if the repository holds
 * all of them (built from the same spec checksum and SOURCE_DATE_EPOCH); else null.
 */
export function findBuilt(repo: RepositoryRef, specDigest: string, formats: readonly OutputFormat[], sourceDateEpoch: number | null): Map<OutputFormat, ImageEntry> | null {
  const opened = openIfExists(repo);
  if (!opened) return null;
  const found = new Map<OutputFormat, ImageEntry>();
  for (const e of imagesOfRequest(opened, specDigest)) {
    const m = buildMeta(e)!;
    if (m.sourceDateEpoch === sourceDateEpoch && formats.includes(m.format)) found.set(m.format, e);
  }
  return formats.every((f) => found.has(f)) ? found : null;
}
