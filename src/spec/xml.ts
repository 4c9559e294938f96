/**
 * A spec written back as XML (the format src/build/formats.ts reads): reading the text
 * gives the same spec again, so the same request checksum. File contents and commands go
 * into CDATA sections, which keep their whitespace; a parent goes inline as <parent>.
 */
import { XML_LISTS } from './formats.js';
import type { BuildSpec, SpecFile } from './spec.js';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
/** CDATA, split around any "]]>" in the text. */
const cdata = (s: string) => `<![CDATA[${s.replace(/]]>/g, ']]]]><![CDATA[>')}]]>`;

function fileXml(f: SpecFile, pad: string): string {
  const attrs = [`destination="${esc(f.destination)}"`];
  if (f.mode !== undefined) attrs.push(`mode="${esc(f.mode)}"`);
  if (f.source !== undefined) return `${pad}<file ${attrs.join(' ')} source="${esc(f.source)}"/>`;
  const content = f.content ?? '';
  return content === '' ? `${pad}<file ${attrs.join(' ')} content=""/>` : `${pad}<file ${attrs.join(' ')}>${cdata(content)}</file>`;
}

function body(spec: BuildSpec, depth: number): string[] {
  const pad = '  '.repeat(depth);
  const lines: string[] = [];
  const scalar = (key: string, value: string | number | boolean | null) => {
    if (value !== null) lines.push(`${pad}<${key}>${esc(String(value))}</${key}>`);
  };
  const list = (key: keyof typeof XML_LISTS & keyof BuildSpec, items: string[], raw = false) => {
    const item = XML_LISTS[key]!;
    if (items.length === 0) return;
    lines.push(`${pad}<${key}>`, ...items.map((v) => `${pad}  <${item}>${raw ? cdata(v) : esc(v)}</${item}>`), `${pad}</${key}>`);
  };
  scalar('name', spec.name);
  scalar('distribution', spec.distribution);
  scalar('release', spec.release);
  scalar('architecture', spec.architecture);
  list('groups', spec.groups);
  list('packages', spec.packages);
  scalar('rootPasswordHash', spec.rootPasswordHash);
  if (spec.files.length > 0) lines.push(`${pad}<files>`, ...spec.files.map((f) => fileXml(f, `${pad}  `)), `${pad}</files>`);
  list('commands', spec.commands, true);
  scalar('hostname', spec.hostname);
  scalar('locale', spec.locale);
  scalar('timezone', spec.timezone);
  list('outputs', spec.outputs);
  list('mirrors', spec.mirrors);
  list('components', spec.components);
  scalar('backend', spec.backend);
  scalar('gpgCheck', spec.gpgCheck);
  scalar('sourceDateEpoch', spec.sourceDateEpoch);
  if (spec.parent) lines.push(`${pad}<parent>`, ...body(spec.parent, depth + 1), `${pad}</parent>`);
  return lines;
}

/** The spec as an XML document (`<image>…</image>`), every default written out, the parent inline. */
export function specToXml(spec: BuildSpec): string {
  return ['<?xml version="1.0" encoding="UTF-8"?>', '<image>', ...body(spec, 1), '</image>', ''].join('\n');
}
