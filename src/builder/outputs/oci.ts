/**
 * The OCI output: an OCI image layout packed as a tar (an `oci-archive`, what `podman load`
 * and `skopeo copy oci-archive:…` read) with one uncompressed layer per stage of the
 * image's chain, core first (layer.ts): images on one stage share that stage's layer blobs
 * byte for byte, so a registry or podman stores them once. The archive itself is packed by
 * osfarm's aligned packer, so each layer's data starts on a 4 KiB boundary and the
 * archive shares its blocks with the layers (docs/disk.md, "OCI").
 */
import { createHash } from 'node:crypto';
import { copyFile, link, lstat, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { pack } from '../../pack/index.js';
import type { Architecture } from '../../spec/distros.js';
import type { LayerTree, OutputContext } from './context.js';
import { layerScratch, type StageLayer, stageLayer } from './layer.js';

/** The architecture as OCI (Go) names it. */
const OCI_ARCH: Record<Architecture, { architecture: string; variant?: string }> = {
  amd64: { architecture: 'amd64' },
  i386: { architecture: '386' },
  arm64: { architecture: 'arm64', variant: 'v8' },
  armhf: { architecture: 'arm', variant: 'v7' },
};

/** The name podman gives the loaded image (`localhost/<name>:latest`). */
export function ociReference(ctx: OutputContext): string {
  return `localhost/${ctx.spec.name.toLowerCase().replace(/[^a-z0-9._-]/g, '-')}:latest`;
}

/** Writes the oci-archive to `path`. */
export async function writeOci(path: string, ctx: OutputContext): Promise<void> {
  const dir = join(ctx.buildDir, 'oci-layout');
  await rm(dir, { recursive: true, force: true });
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true, mode: 0o755 });
  const layers: (StageLayer & { stage: LayerTree })[] = [];
  for (let i = 0; i < ctx.layers.length; i++) {
    const layer = await stageLayer(ctx, i);
    const blobPath = join(dir, 'blobs', 'sha256', layer.digest);
    // Two stages that changed the same (nothing, say) give one blob.
    if (!(await lstat(blobPath).then(() => true, () => false))) await link(layer.path, blobPath).catch(() => copyFile(layer.path, blobPath));
    layers.push({ ...layer, stage: ctx.layers[i]! });
  }
  const blob = async (value: unknown): Promise<{ digest: string; size: number }> => {
    const text = JSON.stringify(value);
    const digest = createHash('sha256').update(text).digest('hex');
    await writeFile(join(dir, 'blobs', 'sha256', digest), text);
    return { digest: `sha256:${digest}`, size: Buffer.byteLength(text) };
  };
  const created = new Date((ctx.sourceDateEpoch ?? Math.floor(Date.now() / 1000)) * 1000).toISOString().replace(/\.000Z$/, 'Z');
  const stageName = (l: (typeof layers)[number]) => `${l.stage.label ?? `stage ${layers.indexOf(l)}`}${l.stage.tag ? ` ${l.stage.tag}` : ''}`;
  const config = await blob({
    ...OCI_ARCH[ctx.spec.architecture],
    os: 'linux',
    created,
    config: {
      Cmd: ['/bin/sh'],
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Labels: {
        'org.osfarm.spec-digest': ctx.digest,
        'org.osfarm.stages': layers.map((l) => l.stage.tag ?? '-').join(' '),
        'org.opencontainers.image.title': ctx.spec.name,
      },
    },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${l.digest}`) },
    history: layers.map((l) => ({ created, created_by: `osfarm stage ${stageName(l)}`, comment: `${l.added} added, ${l.changed} changed, ${l.removed} removed` })),
  });
  const manifest = await blob({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: layers.map((l) => ({
      mediaType: 'application/vnd.oci.image.layer.v1.tar',
      digest: `sha256:${l.digest}`,
      size: l.size,
      ...(l.stage.tag ? { annotations: { 'org.osfarm.stage': l.stage.tag } } : {}),
    })),
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
  // pack clamps every time to the epoch: the new files' and the layers' (links to the kept layers, left as they are).
  await pack(dir, path, { ...(ctx.sourceDateEpoch !== null ? { sourceDateEpoch: ctx.sourceDateEpoch } : {}), signal: ctx.signal, onProgress: ctx.onProgress });
  await rm(dir, { recursive: true, force: true });
  await rm(layerScratch(ctx), { recursive: true, force: true });
}
