/**
 * What a built image's package list answers (docs/trust.md): which packages changed between
 * two images — the certification question "what does this patch change?" — and its SBOM,
 * as SPDX 2.3 JSON or CycloneDX 1.5 JSON. Both are pure functions of the image's build
 * metadata, which the signed manifest covers (`metaSha256`): a verified image's SBOM is the
 * origin's, byte for byte, wherever it is made.
 */
import { createHash } from 'node:crypto';

import { OsfarmError } from '../base/errors.js';
import { VERSION } from '../base/version.js';
import { familyOf } from '../spec/distros.js';
import type { ImageEntry } from '../repo/index.js';
import { type BuildMeta, type InstalledPackage, requireBuildMeta } from './lookup.js';

/** An image's package list, or OSFARM_NOT_FOUND saying why it has none. */
export function packagesOf(entry: ImageEntry): { meta: BuildMeta; packages: InstalledPackage[] } {
  const meta = requireBuildMeta(entry, 'package list');
  if (!meta.installed) {
    throw new OsfarmError('OSFARM_NOT_FOUND', `image ${entry.name ?? entry.digest.slice(0, 16)} has no package list: it was built before osfarm recorded one (rebuild it)`);
  }
  return { meta, packages: meta.installed };
}

export interface PackageChange {
  name: string;
  arch?: string;
  from: string;
  to: string;
}

export interface PackageDiff {
  added: InstalledPackage[];
  removed: InstalledPackage[];
  changed: PackageChange[];
  /** Packages in both at the same version. */
  unchanged: number;
}

/** A package's identity across images: its name and, for multi-arch installs, architecture. */
const key = (p: InstalledPackage) => `${p.name}:${p.arch ?? ''}`;
const byName = (a: { name: string; arch?: string }, b: { name: string; arch?: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : (a.arch ?? '') < (b.arch ?? '') ? -1 : 1);

/** The packages added, removed and changed (by version) from image `a` to image `b`. */
export function diffPackages(a: readonly InstalledPackage[], b: readonly InstalledPackage[]): PackageDiff {
  const before = new Map(a.map((p) => [key(p), p]));
  const after = new Map(b.map((p) => [key(p), p]));
  const out: PackageDiff = { added: [], removed: [], changed: [], unchanged: 0 };
  for (const [k, p] of after) {
    const old = before.get(k);
    if (!old) out.added.push(p);
    else if (old.version !== p.version) out.changed.push({ name: p.name, ...(p.arch ? { arch: p.arch } : {}), from: old.version, to: p.version });
    else out.unchanged++;
  }
  for (const [k, p] of before) if (!after.has(k)) out.removed.push(p);
  out.added.sort(byName);
  out.removed.sort(byName);
  out.changed.sort(byName);
  return out;
}

/** The package URL (purl) of a package of a `distribution` image. */
function purl(p: InstalledPackage, meta: BuildMeta): string {
  const spec = meta.spec;
  const type = familyOf(spec.distribution) === 'deb' ? 'deb' : 'rpm';
  const q = new URLSearchParams();
  if (p.arch) q.set('arch', p.arch);
  q.set('distro', `${spec.distribution}-${spec.release}`);
  if (p.source && p.source !== p.name) q.set('upstream', p.sourceVersion ? `${p.source}@${p.sourceVersion}` : p.source);
  return `pkg:${type}/${spec.distribution}/${encodeURIComponent(p.name)}@${encodeURIComponent(p.version)}?${q.toString()}`;
}

/** When the image was built, as SBOMs want it: SOURCE_DATE_EPOCH when set, else the build's time. */
function created(meta: BuildMeta, entry: ImageEntry): string {
  const at = meta.sourceDateEpoch !== null ? new Date(meta.sourceDateEpoch * 1000) : meta.built ? new Date(meta.built) : entry.added;
  return at.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A name for the image in documents: its spec's name and request checksum. */
const imageName = (meta: BuildMeta) => `${meta.spec.name ?? 'image'} (${meta.spec.distribution} ${meta.spec.release} ${meta.spec.architecture}, ${meta.format})`;

/** SPDX 2.3 JSON: the image as the described package, containing every installed package. */
export function spdxDocument(entry: ImageEntry): Record<string, unknown> {
  const { meta, packages } = packagesOf(entry);
  const seen = new Map<string, number>();
  const id = (p: InstalledPackage) => {
    // SPDX ids allow letters, digits, '.' and '-'; '+' and '_' (libstdc++6, …) are mapped and numbered if needed.
    const base = `SPDXRef-Package-${p.name.replace(/[^A-Za-z0-9.-]/g, '-')}${p.arch ? `-${p.arch.replace(/[^A-Za-z0-9.-]/g, '-')}` : ''}`;
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    return n === 1 ? base : `${base}-${n}`;
  };
  const items = packages.map((p) => ({ p, id: id(p) }));
  return {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name: imageName(meta),
    documentNamespace: `urn:osfarm:image:${entry.digest}`,
    creationInfo: { created: created(meta, entry), creators: [`Tool: osfarm-${VERSION}`] },
    packages: [
      {
        SPDXID: 'SPDXRef-Image',
        name: meta.spec.name ?? 'image',
        versionInfo: entry.digest,
        primaryPackagePurpose: 'OPERATING-SYSTEM',
        downloadLocation: 'NOASSERTION',
        filesAnalyzed: false,
        checksums: [{ algorithm: 'SHA256', checksumValue: meta.specDigest }],
        comment: `osfarm image ${entry.digest} (${meta.format}); the checksum is its build request's (spec digest)`,
      },
      ...items.map(({ p, id }) => ({
        SPDXID: id,
        name: p.name,
        versionInfo: p.version,
        downloadLocation: 'NOASSERTION',
        filesAnalyzed: false,
        supplier: 'NOASSERTION',
        ...(p.source ? { sourceInfo: `built from source package ${p.source}${p.sourceVersion ? ` ${p.sourceVersion}` : ''}` } : {}),
        externalRefs: [{ referenceCategory: 'PACKAGE-MANAGER', referenceType: 'purl', referenceLocator: purl(p, meta) }],
      })),
    ],
    relationships: [
      { spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: 'SPDXRef-Image' },
      ...items.map(({ id }) => ({ spdxElementId: 'SPDXRef-Image', relationshipType: 'CONTAINS', relatedSpdxElement: id })),
    ],
  };
}

/** CycloneDX 1.5 JSON: the image as the BOM's operating-system component, its packages as components. */
export function cyclonedxDocument(entry: ImageEntry): Record<string, unknown> {
  const { meta, packages } = packagesOf(entry);
  // A serial number that names this image's BOM: the same document wherever it is made.
  const h = createHash('sha256').update(`osfarm cyclonedx\0${entry.digest}`).digest('hex');
  const uuid = `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${((parseInt(h[16]!, 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
  return {
    bomFormat: 'CycloneDX',
    specVersion: '1.5',
    serialNumber: `urn:uuid:${uuid}`,
    version: 1,
    metadata: {
      timestamp: created(meta, entry),
      tools: { components: [{ type: 'application', name: 'osfarm', version: VERSION }] },
      component: { type: 'operating-system', 'bom-ref': 'image', name: meta.spec.name ?? 'image', version: entry.digest, description: imageName(meta) },
    },
    components: packages.map((p) => ({
      type: 'library',
      'bom-ref': purl(p, meta),
      name: p.name,
      version: p.version,
      purl: purl(p, meta),
      ...(p.source ? { pedigree: { ancestors: [{ type: 'library', name: p.source, ...(p.sourceVersion ? { version: p.sourceVersion } : {}) }] } } : {}),
    })),
    dependencies: [{ ref: 'image', dependsOn: packages.map((p) => purl(p, meta)) }],
  };
}
