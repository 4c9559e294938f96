/**
 * A spec written back as XML (the format formats.ts reads): reading the text
 * gives the same spec again, so the same request checksum. File contents and commands go
 * into CDATA sections, which keep their whitespace; a parent goes inline as <parent>.
 */
import { CANONICAL_FIELDS } from './fields.js';
import { atDefault, type BuildSpec, type SpecFile, type SpecUser } from './spec.js';

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

function userXml(u: SpecUser, pad: string): string[] {
  if (u.sshKeys.length === 0) return [`${pad}<user name="${esc(u.name)}"/>`];
  return [`${pad}<user name="${esc(u.name)}">`, ...u.sshKeys.map((k) => `${pad}  <sshKey>${esc(k)}</sshKey>`), `${pad}</user>`];
}

function body(spec: BuildSpec, depth: number): string[] {
  const pad = '  '.repeat(depth);
  const lines: string[] = [];
  const values = spec as unknown as Record<string, unknown>;
  for (const f of CANONICAL_FIELDS) {
    const value = values[f.name];
    if (atDefault(f, value)) continue;
    switch (f.shape) {
      case 'scalar':
        if (value !== null && value !== undefined) lines.push(`${pad}<${f.name}>${esc(String(value))}</${f.name}>`);
        break;
      case 'set':
      case 'list': {
        const items = value as string[];
        if (items.length === 0) break;
        const item = f.xml!.item;
        lines.push(`${pad}<${f.name}>`, ...items.map((v) => `${pad}  <${item}>${f.xml!.cdata ? cdata(v) : esc(v)}</${item}>`), `${pad}</${f.name}>`);
        break;
      }
      case 'files':
        if (spec.files.length > 0) lines.push(`${pad}<files>`, ...spec.files.map((file) => fileXml(file, `${pad}  `)), `${pad}</files>`);
        break;
      case 'users':
        if (spec.users.length > 0) lines.push(`${pad}<users>`, ...spec.users.flatMap((u) => userXml(u, `${pad}  `)), `${pad}</users>`);
        break;
      case 'parent':
        if (spec.parent) lines.push(`${pad}<parent>`, ...body(spec.parent, depth + 1), `${pad}</parent>`);
        break;
    }
  }
  return lines;
}

/** The spec as an XML document (`<image>…</image>`), every default written out, the parent inline. */
export function specToXml(spec: BuildSpec): string {
  return ['<?xml version="1.0" encoding="UTF-8"?>', '<image>', ...body(spec, 1), '</image>', ''].join('\n');
}
