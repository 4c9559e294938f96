/**
 * `osfarm boot URL` and `osfarm boot NAME` of a partly present image: boots an image
 * before it has arrived (docs/lazy-boot.md). The image is exported over NBD by `pullLazy`
 * (verified blocks, local blocks first, the rest fetched, prefetched and published), and
 * `boot()` runs qemu on that export with guest writes in its overlay. The caller closes
 * the export: after `exp.completed` to have the image published, or at once (what arrived
 * stays for the next run).
 */
import { existsSync } from 'node:fs';

import { repositoryPath } from '../base/env.js';
import type { OsfarmError } from '../base/errors.js';
import { boot, type BootOptions, type VmHandle } from '../boot/index.js';
import { openIfExists } from '../images/lookup.js';
import { type LazyEvent, type LazyExport, type LazyPullOptions, pullLazy } from '../transfer/lazy/export.js';
import { findPartialOrigin } from '../transfer/lazy/origin.js';

export interface LazyBootOptions extends BootOptions {
  /** How the image is fetched (parallel requests, retries, socket, …); repo and signal are the boot's. */
  lazy?: Omit<LazyPullOptions, 'repo' | 'signal' | 'onEvent'>;
  onLazyEvent?: (event: LazyEvent) => void;
}

/** True for an http(s) URL: what is booted lazily from its origin. */
export function isImageUrl(image: string): boolean {
  return /^https?:\/\//i.test(image);
}

/**
 * Where `image` is fetched from when booted: the URL itself, or the recorded origin of an
 * image the repository holds only partly (a lazy pull was stopped); undefined for what
 * `boot()` boots as it is (a file, an NBD URI, a complete repository image, or nothing known).
 */
export function lazySource(image: string, repo?: string): { url: string; name?: string } | undefined {
  if (isImageUrl(image)) return { url: image };
  if (/^nbd(\+\w+)?:\/\//.test(image) || existsSync(image)) return undefined;
  const repoPath = repositoryPath(repo);
  const r = openIfExists(repoPath);
  if (!r) return undefined;
  try {
    r.resolve(image);
    return undefined; // complete: boot() boots it from the repository
  } catch (err) {
    if ((err as OsfarmError).code !== 'OSFARM_NOT_FOUND') throw err;
  } finally {
    r.close();
  }
  const o = findPartialOrigin(repoPath, image);
  return o && { url: o.url, ...(o.name ? { name: o.name } : {}) };
}

/** Serves `url` lazily and boots it (the export is closed if the boot fails). */
export async function bootLazy(url: string, options: LazyBootOptions = {}): Promise<{ vm: VmHandle; exp: LazyExport }> {
  const { lazy, onLazyEvent, ...bootOptions } = options;
  const exp = await pullLazy(url, { ...lazy, repo: repositoryPath(options.repo), signal: options.signal, onEvent: onLazyEvent });
  try {
    return { vm: await boot(exp.uri, bootOptions), exp };
  } catch (err) {
    await exp.close();
    throw err;
  }
}

/**
 * Boots `image` as `osfarm boot` does: lazily when `lazySource` finds where to fetch it
 * from (`exp` is then the export), else with `boot()`.
 */
export async function bootAny(image: string, options: LazyBootOptions = {}): Promise<{ vm: VmHandle; exp?: LazyExport }> {
  const src = lazySource(image, options.repo);
  if (!src) {
    const { lazy: _lazy, onLazyEvent: _events, ...bootOptions } = options;
    return { vm: await boot(image, bootOptions) };
  }
  return bootLazy(src.url, { ...options, lazy: { ...options.lazy, ...(src.name && !options.lazy?.name ? { name: src.name } : {}) } });
}
