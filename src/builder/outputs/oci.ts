/**
 * The OCI output: an OCI image layout packed as a tar (an `oci-archive`, what `podman load`
 * and `skopeo copy oci-archive:…` read) with one uncompressed layer, which is the image's
 * block-aligned tar as it is (a valid tar). The archive itself is packed by osfarm's
 * aligned packer, so the layer's data starts on a 4 KiB boundary and the archive shares its
 * blocks with the aligned tar of the same tree (docs/disk.md, "OCI").
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, link, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

import { pack } from '../../pack/index.js';
import type { Architecture } from '../../spec/distros.js';
import type { OutputContext } from './context.js';

/** The architecture as OCI (Go) names it. */
const OCI_ARCH: Record<Architecture, { architecture: string; variant?: string }> = {
  amd64: { architecture: 'amd64' },
  i386: { architecture: '386' },
  arm64: { architecture: 'arm64', variant: 'v8' },
  armhf: { architecture: 'arm', variant: 'v7' },
};

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

/** The name podman gives the loaded image (`localhost/<name>:latest`). */
export function ociReference(ctx: OutputContext): string {
  return `localhost/${ctx.spec.name.toLowerCase().replace(/[^a-z0-9._-]/g, '-')}:latest`;
}

/** Writes the oci-archive to `path`; `layerTar` is the image's aligned tar (not modified). */
export async function writeOci(path: string, layerTar: string, ctx: OutputContext): Promise<void> {
  const dir = join(ctx.buildDir, 'oci-layout');
  await rm(dir, { recursive: true, force: true });
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true, mode: 0o755 });
  const layerDigest = await sha256File(layerTar);
  const layerSize = (await stat(layerTar)).size;
  const blobPath = join(dir, 'blobs', 'sha256', layerDigest);
  await link(layerTar, blobPath).catch(() => copyFile(layerTar, blobPath));
  const blob = async (value: unknown): Promise<{ digest: string; size: number }> => {
    const text = JSON.stringify(value);
    const digest = createHash('sha256').update(text).digest('hex');
    await writeFile(join(dir, 'blobs', 'sha256', digest), text);
    return { digest: `sha256:${digest}`, size: Buffer.byteLength(text) };
  };
  const created = new Date((ctx.sourceDateEpoch ?? Math.floor(Date.now() / 1000)) * 1000).toISOString().replace(/\.000Z$/, 'Z');
  const config = await blob({
    ...OCI_ARCH[ctx.spec.architecture],
    os: 'linux',
    created,
    config: { Cmd: ['/bin/sh'], Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Labels: { 'org.osfarm.spec-digest': ctx.digest } },
    rootfs: { type: 'layers', diff_ids: [`sha256:${layerDigest}`] },
    history: [{ created, created_by: `osfarm build (spec ${ctx.digest.slice(0, 16)})` }],
  });
  const manifest = await blob({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${layerDigest}`, size: layerSize }],
  });
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': ociReference(ctx) } }],
    }),
  );
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  // pack clamps every time to the epoch: the new files' and the layer's (a link to the tar output, left as it is).
  await pack(dir, path, { ...(ctx.sourceDateEpoch !== null ? { sourceDateEpoch: ctx.sourceDateEpoch } : {}), signal: ctx.signal, onProgress: ctx.onProgress });
  await rm(dir, { recursive: true, force: true });
}
