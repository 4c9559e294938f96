/** `osfarm images …`: built images by their request: find by spec, show, export the spec as XML; tags and their history. */
import { writeFileSync } from 'node:fs';

import { loadSpec } from '../../spec/spec.js';
import { type DiffResult, diffImages, exportSpec, findImages, type FindResult, imageSbom, repositoryParents, type SbomFormat, showImage, type ShowResult } from '../../images/index.js';
import { type Command, type CommandContext, flag, str } from '../command.js';
import { bytes, table, tagList } from '../format.js';
import { nameHistory, type NameRecord } from '../../trust/names.js';
import { tagImage, type TagResult, untagImage } from '../../trust/tags.js';
import { Repository } from '../../repo/index.js';
import { writeFileAtomic } from '../../host/fs.js';

const when = (iso: string) => iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');

/** Says aloud each tag that left another image (`osfarm images history TAG` lists every move). */
export function sayMoves(ctx: CommandContext, moves: readonly NameRecord[]): void {
  for (const moved of moves) {
    if (!moved.previous || !moved.digest) continue;
    ctx.info(`tag '${moved.name}' moved from ${moved.previous} to ${moved.digest}`);
    ctx.event({ type: 'name-moved', ...moved });
  }
}

type ShownTag = Omit<TagResult, 'image'> & { digest: string; tags: string[] };

const shownTag = (r: TagResult): ShownTag => ({ digest: r.image.digest, tags: r.image.tags, moves: r.moves });

const tag: Command<ShownTag> = {
  name: 'tag',
  summary: 'give an image more tags (names); a tag another image has moves, said aloud and kept in its history',
  usage: ['NAME|DIGEST TAG...'],
  operands: { complete: 'none', min: 2 },
  examples: [
    { command: 'osfarm images tag app1.tar app:2026-12 app:stable', what: 'app1.tar is also app:2026-12 and app:stable (taking app:stable from the image that had it)' },
    { command: 'osfarm images tag 3f2a9c prod', what: 'tag an image by a digest prefix' },
  ],
  async run(args, ctx) {
    const [ref, ...tags] = args.positionals as [string, ...string[]];
    const r = tagImage(ctx.repoPath, ref, tags);
    sayMoves(ctx, r.moves);
    return shownTag(r);
  },
  render: (r) => `${r.digest}: ${tagList(r.tags)}`,
};

const untag: Command<ShownTag> = {
  name: 'untag',
  summary: 'remove tags; the image stays (by digest and its other tags) until `osfarm repo rm`',
  usage: ['TAG...'],
  operands: { complete: 'none', min: 1 },
  examples: [{ command: 'osfarm images untag app:old', what: 'app:old names no image any more; the image it named stays' }],
  async run(args, ctx) {
    let last: TagResult | undefined;
    const moves: NameRecord[] = [];
    for (const t of args.positionals) {
      last = untagImage(ctx.repoPath, t);
      moves.push(...last.moves);
      ctx.event({ type: 'untagged', tag: t, digest: last.image.digest });
    }
    return { ...shownTag(last!), moves };
  },
  render: (r) => `${r.moves.map((m) => `untagged ${m.name} (was on ${m.previous})`).join('\n')}\n${r.digest}: ${r.tags.length ? tagList(r.tags) : 'no tags left: still in the repository by its digest'}`,
};

const find: Command<FindResult> = {
  name: 'find',
  summary: 'the images built from a spec (same request checksum), every format; exits 1 when there is none',
  usage: ['SPEC.yaml|SPEC.json|SPEC.xml'],
  operands: { complete: 'file', min: 1, max: 1 },
  examples: [{ command: 'osfarm images find appliance.yaml', what: 'the images of that request, if the repository has them' }],
  async run(args, ctx) {
    const spec = loadSpec(args.positionals[0]!, { resolveParent: repositoryParents(ctx.repoPath) });
    const r = findImages(ctx.repoPath, spec);
    if (r.images.length === 0) process.exitCode = 1;
    return r;
  },
  render(r) {
    if (r.images.length === 0) return `no image of request ${r.specDigest.slice(0, 16)} in the repository (osfarm build builds it)`;
    const rows = r.images.map((i) => [i.format, i.digest.slice(0, 16), i.name ?? '', bytes(i.size), when(i.added), i.sourceDateEpoch === null ? '-' : String(i.sourceDateEpoch)]);
    return [`request ${r.specDigest}`, table(rows, ['format', 'digest', 'name', 'size', 'added', 'SOURCE_DATE_EPOCH'])].join('\n');
  },
};

const show: Command<ShowResult> = {
  name: 'show',
  summary: "an image's spec, stages, size, formats and build log",
  usage: ['NAME|DIGEST [--log]'],
  options: { log: { type: 'boolean', description: 'print the whole kept end of the build log (default: its last 10 lines)' } },
  operands: { complete: 'none', min: 1, max: 1 },
  examples: [{ command: 'osfarm images show app1.tar --log', what: 'how app1.tar was built, with the end of its build log' }],
  async run(args, ctx) {
    const r = showImage(ctx.repoPath, args.positionals[0]!);
    // The human form prints the whole log tail only when asked.
    if (!flag(args, 'log') && !ctx.json && r.buildLog) r.buildLog = { ...r.buildLog, tail: r.buildLog.tail.split('\n').slice(-10).join('\n') };
    return r;
  },
  render(r) {
    const s = r.spec;
    return [
      `image ${r.tags.length ? tagList(r.tags) : '(no tags)'} ${r.digest}`,
      `  format ${r.format}, ${bytes(r.size)}, added ${when(r.added)}, at ${r.path}`,
      `  request ${r.specDigest}: ${s.distribution} ${s.release} ${s.architecture}, built with ${r.backend} by ${r.builder}${r.built ? ` at ${when(r.built)}` : ''}${r.cow ? `, stages on ${r.cow}` : ''}`,
      `  formats: ${r.formats.map((f) => `${f.format} ${f.digest.slice(0, 12)} (${bytes(f.size)})`).join(', ')}`,
      '  stages:',
      ...r.stages.map((st) => `    ${st.tag.slice(0, 12)}  ${st.label}`),
      '  spec (canonical JSON):',
      ...JSON.stringify(s, null, 2).split('\n').map((l) => `    ${l}`),
      ...(r.buildLog ? [`  build log ${r.buildLog.path} (last lines):`, ...r.buildLog.tail.split('\n').map((l) => `    ${l}`)] : []),
    ].join('\n');
  },
};

const exportCmd: Command<{ specDigest: string; xml: string; output: string | null }> = {
  name: 'export',
  summary: "the spec an image was built from, as XML (reading it back gives the same request checksum)",
  usage: ['NAME|DIGEST [-o SPEC.xml]'],
  options: { output: { type: 'string', short: 'o', value: 'SPEC.xml', complete: 'file', description: 'write the XML to this file instead of printing it' } },
  operands: { complete: 'none', min: 1, max: 1 },
  examples: [{ command: 'osfarm images export app1.tar -o app1.xml && osfarm build app1.xml', what: 'rebuild an image from the spec it was built from' }],
  async run(args, ctx) {
    const r = exportSpec(ctx.repoPath, args.positionals[0]!);
    const output = str(args, 'output') ?? null;
    if (output) writeFileSync(output, r.xml);
    return { ...r, output };
  },
  render(r) {
    return r.output ? `wrote the spec of request ${r.specDigest.slice(0, 16)} to ${r.output}` : r.xml.trimEnd();
  },
};

const history: Command<{ name: string; current: string | null; moves: NameRecord[] }> = {
  name: 'history',
  summary: 'every image a tag (name) was given to and taken from, oldest first (names.jsonl), and which has it now',
  usage: ['TAG'],
  operands: { complete: 'none', min: 1, max: 1 },
  examples: [{ command: 'osfarm images history app1.tar', what: 'which images were called app1.tar, and when each got the name (build, add, receive, pull)' }],
  async run(args, ctx) {
    const name = args.positionals[0]!;
    const current = Repository.open(ctx.repoPath).list().find((e) => e.tags.includes(name))?.digest ?? null;
    return { name, current, moves: nameHistory(ctx.repoPath, name) };
  },
  render(r) {
    const rows = r.moves.map((m) => [when(m.at), m.via, m.digest ? m.digest.slice(0, 16) : '(removed)', m.previous ? m.previous.slice(0, 16) : '-']);
    return [
      `tag ${r.name}: ${r.current ? `now on ${r.current}` : 'on no image now'}`,
      rows.length ? table(rows, ['when', 'via', 'image', 'previous']) : '  no recorded moves',
    ].join('\n');
  },
};

const diff: Command<DiffResult> = {
  name: 'diff',
  summary: 'the packages image B adds, removes and changes against image A',
  usage: ['A B'],
  operands: { complete: 'none', min: 2, max: 2 },
  examples: [{ command: 'osfarm images diff app1.tar app2.tar', what: 'which packages app2.tar adds, removes and changes against app1.tar' }],
  async run(args, ctx) {
    return diffImages(ctx.repoPath, args.positionals[0]!, args.positionals[1]!);
  },
  render(r) {
    const label = (x: DiffResult['a']) => `${x.name ?? '(no name)'} ${x.digest.slice(0, 12)}`;
    const arch = (a?: string) => (a ? `:${a}` : '');
    return [
      `${label(r.a)} -> ${label(r.b)}: ${r.added.length} added, ${r.removed.length} removed, ${r.changed.length} changed, ${r.unchanged} unchanged`,
      ...r.added.map((p) => `+ ${p.name}${arch(p.arch)} ${p.version}`),
      ...r.removed.map((p) => `- ${p.name}${arch(p.arch)} ${p.version}`),
      ...r.changed.map((p) => `~ ${p.name}${arch(p.arch)} ${p.from} -> ${p.to}`),
    ].join('\n');
  },
};

const SBOM_FORMATS: readonly SbomFormat[] = ['spdx', 'cyclonedx'];

const sbom: Command<{ format: SbomFormat; output: string | null; document: Record<string, unknown> }> = {
  name: 'sbom',
  summary: "an image's installed packages as an SBOM: SPDX 2.3 JSON (default) or CycloneDX 1.5 JSON",
  usage: ['NAME|DIGEST [--format spdx|cyclonedx] [-o FILE]'],
  options: {
    format: { type: 'string', value: 'spdx|cyclonedx', choices: SBOM_FORMATS, description: 'SPDX 2.3 JSON (default) or CycloneDX 1.5 JSON' },
    output: { type: 'string', short: 'o', value: 'FILE', complete: 'file', description: 'write the SBOM to FILE instead of printing it' },
  },
  operands: { complete: 'none', min: 1, max: 1 },
  examples: [{ command: 'osfarm images sbom app1.tar --format cyclonedx -o app1.cdx.json', what: "app1.tar's installed packages as a CycloneDX SBOM" }],
  async run(args, ctx) {
    const format = (str(args, 'format') ?? 'spdx') as SbomFormat;
    const document = imageSbom(ctx.repoPath, args.positionals[0]!, format);
    const output = str(args, 'output') ?? null;
    if (output) writeFileAtomic(output, `${JSON.stringify(document, null, 2)}\n`);
    return { format, output, document };
  },
  render(r) {
    return r.output ? `wrote the ${r.format} SBOM to ${r.output}` : JSON.stringify(r.document, null, 2);
  },
};

const command: Command = {
  name: 'images',
  section: 'build',
  summary: 'built images by request: find SPEC, show NAME|DIGEST, export NAME|DIGEST (spec as XML); tag, untag and history of tags; diff A B, sbom NAME|DIGEST',
  usage: [],
  subcommands: [find, show, exportCmd, tag, untag, history, diff, sbom] as Command[],
};
export default command;
