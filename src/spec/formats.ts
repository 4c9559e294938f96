/** Reads a build spec's text (YAML, JSON or XML) into a plain object; validation is spec.ts's job. */
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import YAML from 'yaml';

import { SpecError } from './errors.js';
import { XML_LISTS } from './fields.js';

export type SpecFormat = 'yaml' | 'json' | 'xml';

/**
 * The largest spec accepted, as the web API's body limit: a real spec is a few KiB, and
 * parsing a huge one costs seconds and hundreds of MiB (issue 17).
 */
export const MAX_SPEC_BYTES = 1 << 20;

/** Refuses a spec of `bytes` bytes above MAX_SPEC_BYTES (`what` names it: a file, the text). */
export function checkSpecSize(bytes: number, what: string): void {
  if (bytes > MAX_SPEC_BYTES) {
    throw new SpecError([{ path: 'spec', message: `${what} has ${bytes} bytes; a spec may have at most ${MAX_SPEC_BYTES} (1 MiB)` }]);
  }
}

/** The spec format a file name implies: `.yaml`/`.yml`, `.json`, `.xml`. */
export function formatOf(path: string): SpecFormat | undefined {
  const p = path.toLowerCase();
  if (p.endsWith('.yaml') || p.endsWith('.yml')) return 'yaml';
  if (p.endsWith('.json')) return 'json';
  if (p.endsWith('.xml')) return 'xml';
  return undefined;
}

/** Guesses the format of a spec's text: `<` starts XML, `{` starts JSON, anything else is YAML. */
export function sniffFormat(text: string): SpecFormat {
  const t = text.replace(/^\uFEFF/, '').trimStart();
  if (t.startsWith('<')) return 'xml';
  if (t.startsWith('{')) return 'json';
  return 'yaml';
}

const XML_ROOTS = ['image', 'spec', 'osfarm'];

export function parseText(text: string, format: SpecFormat): unknown {
  if (text.length > MAX_SPEC_BYTES / 4) checkSpecSize(Buffer.byteLength(text), 'the spec');
  switch (format) {
    case 'json':
      try {
        return JSON.parse(text);
      } catch (err) {
        throw new SpecError([{ path: 'spec', message: `not valid JSON: ${(err as Error).message}` }]);
      }
    case 'yaml': {
      const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
      if (doc.errors.length > 0) {
        throw new SpecError(doc.errors.map((e) => ({ path: 'spec', message: `not valid YAML: ${e.message.split('\n')[0]}` })));
      }
      try {
        return doc.toJS();
      } catch (err) {
        // The yaml package refuses alias bombs ("Excessive alias count…") here.
        throw new SpecError([{ path: 'spec', message: `not valid YAML: ${(err as Error).message}` }]);
      }
    }
    case 'xml':
      return parseXml(text);
    default:
      throw new SpecError([{ path: 'spec', message: `unknown spec format '${String(format)}' (yaml, json or xml)` }]);
  }
}

function parseXml(text: string): unknown {
  const valid = XMLValidator.validate(text);
  if (valid !== true) {
    const e = valid.err;
    throw new SpecError([{ path: 'spec', message: `not valid XML: ${e.msg} (line ${e.line}, column ${e.col})` }]);
  }
  const parser = new XMLParser({
    ignoreAttributes: false,
    attributeNamePrefix: '',
    parseTagValue: false,
    parseAttributeValue: false,
    trimValues: true,
    ignoreDeclaration: true,
    ignorePiTags: true,
    commentPropName: false,
    isArray: (_name, jpath) => {
      const parts = String(jpath).split('.').slice(1);
      while (parts[0] === 'parent') parts.shift();
      // <root><packages><package> (also inside a nested <parent>): the item level of a list field is always an array.
      return parts.length === 2 && XML_LISTS[parts[0]!] === parts[1];
    },
  });
  let doc: Record<string, unknown>;
  try {
    doc = parser.parse(text) as Record<string, unknown>;
  } catch (err) {
    // fast-xml-parser refuses external entities and entity expansion bombs here.
    throw new SpecError([{ path: 'spec', message: `not valid XML: ${(err as Error).message}` }]);
  }
  const roots = Object.keys(doc);
  if (roots.length !== 1 || !XML_ROOTS.includes(roots[0]!)) {
    throw new SpecError([{ path: 'spec', message: `the XML root element must be <image> (found ${roots.map((r) => `<${r}>`).join(', ') || 'none'})` }]);
  }
  return xmlSpec(doc[roots[0]!]);
}

/** The spec object of an XML root (or of a nested <parent> element holding an inline spec). */
function xmlSpec(root: unknown): unknown {
  if (root === '' || root === undefined) return {};
  if (typeof root !== 'object' || root === null) return root;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(root)) {
    const item = XML_LISTS[key];
    if (item !== undefined) {
      if (value === '' || value === undefined) out[key] = [];
      else if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
        const inner = value as Record<string, unknown>;
        const extra = Object.keys(inner).filter((k) => k !== item);
        if (extra.length > 0) {
          throw new SpecError([{ path: `spec.${key}`, message: `in XML, <${key}> holds only <${item}> elements (found <${extra[0]}>)` }]);
        }
        out[key] = inner[item] ?? [];
      } else out[key] = value;
    } else if (Array.isArray(value)) {
      throw new SpecError([{ path: `spec.${key}`, message: `<${key}> appears more than once` }]);
    } else if (key === 'parent' && typeof value === 'object' && value !== null) out[key] = xmlSpec(value);
    else out[key] = value;
  }
  return xmlScalars(out);
}

/** XML has only text: turn the few non-string fields back into numbers and booleans. */
function xmlScalars(obj: Record<string, unknown>): Record<string, unknown> {
  const v = obj.sourceDateEpoch;
  if (typeof v === 'string' && /^\d+$/.test(v)) obj.sourceDateEpoch = Number(v);
  const g = obj.gpgCheck;
  if (g === 'true' || g === 'false') obj.gpgCheck = g === 'true';
  const c = obj.serialConsole;
  if (c === 'true' || c === 'false') obj.serialConsole = c === 'true';
  if (Array.isArray(obj.users)) {
    // <user name="…"><sshKey>…</sshKey>…</user>: one key is a string, several an array.
    obj.users = obj.users.map((u) => {
      if (typeof u !== 'object' || u === null || !('sshKey' in u)) return u;
      const { sshKey, ...rest } = u as Record<string, unknown>;
      return { ...rest, sshKeys: Array.isArray(sshKey) ? sshKey : [sshKey] };
    });
  }
  if (Array.isArray(obj.files)) {
    obj.files = obj.files.map((f) => {
      if (typeof f === 'object' && f !== null && '#text' in f) {
        const { '#text': text, ...rest } = f as Record<string, unknown>;
        return { ...rest, content: text };
      }
      return f;
    });
  }
  return obj;
}
