/**
 * Image formats written from a finished stage chain: the block-aligned tar (default),
 * tar.gz (the seed's format), ext4 (the root file system alone), disk (a bootable raw disk),
 * qcow2 (that disk converted), squashfs and oci (an OCI archive with a layer per stage).
 * Every writer is deterministic for a given tree, spec digest and SOURCE_DATE_EPOCH.
 * docs/build.md lists them; docs/disk.md describes the disk.
 */
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

import type { OutputFormat } from '../../spec/distros.js';
import { type OutputContext, treeOf } from './context.js';
import { writeDisk } from './disk.js';
import { writeOci } from './oci.js';
import { writeQcow2 } from './qcow2.js';
import { populatedRoot, rootBlocks, writeExt4 } from './rootfs.js';
import { writeSquashfs } from './squashfs.js';
import { writeTar, writeTarGz } from './tar.js';

export { type LayerTree, type OutputContext, derivedUuid } from './context.js';
export { checkOutputTools } from './tools.js';

/** The order outputs are written in: what another output is made from first (disk → qcow2). */
const ORDER: OutputFormat[] = ['tar', 'ext4', 'disk', 'qcow2', 'tar.gz', 'squashfs', 'oci'];

/**
 * Writes one build's outputs. Work shared between formats is done once: the populated root
 * file system (ext4, disk), the raw disk (disk, qcow2).
 */
export class OutputWriter {
  private root?: Promise<string>;
  /** Finished outputs (or scratch files) other formats are made from. */
  private made = new Map<OutputFormat, string>();

  constructor(private readonly ctx: OutputContext) {}

  /** The formats in the order to write them. */
  static order(formats: Iterable<OutputFormat>): OutputFormat[] {
    const set = new Set(formats);
    return ORDER.filter((f) => set.has(f));
  }

  private populated(): Promise<string> {
    this.root ??= rootBlocks(treeOf(this.ctx), this.ctx.signal).then((blocks) => populatedRoot(this.ctx, blocks));
    return this.root;
  }

  /** The output made before or, if it was not asked for, a scratch copy made now. */
  private async source(format: 'disk'): Promise<string> {
    const have = this.made.get(format);
    if (have) return have;
    const scratch = join(this.ctx.buildDir, `source.${format}`);
    await this.writeTo(format, scratch);
    this.made.set(format, scratch);
    return scratch;
  }

  private async writeTo(format: OutputFormat, path: string): Promise<void> {
    const ctx = this.ctx;
    switch (format) {
      case 'tar':
        return writeTar(path, ctx);
      case 'tar.gz':
        return writeTarGz(path, ctx);
      case 'ext4':
        return writeExt4(path, await this.populated(), ctx);
      case 'disk':
        await writeDisk(path, await this.populated(), ctx);
        return;
      case 'qcow2':
        return writeQcow2(path, await this.source('disk'), ctx);
      case 'squashfs':
        return writeSquashfs(path, ctx);
      case 'oci':
        return writeOci(path, ctx);
    }
  }

  /** Writes `format` to `path` (through a temporary name, renamed when complete). */
  async write(format: OutputFormat, path: string): Promise<void> {
    const tmp = `${path}.osfarm-part`;
    await rm(tmp, { force: true });
    try {
      await this.writeTo(format, tmp);
      await rename(tmp, path);
      if (format === 'disk') this.made.set(format, path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }
}
