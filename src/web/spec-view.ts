/** A stored spec as the Repository page shows it: JSON as recorded, and the same in the XML spec form (which reads back as a spec). */
import { XMLBuilder } from 'fast-xml-parser';

import { XML_LISTS } from '../build/formats.js';

/** The spec's fields in XML shape: a list field holds its items as repeated elements; a parent nests. */
function xmlShape(spec: Record<string, unknown>): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(spec)) {
    // specVersion is the canonical form's own; without it the XML reads back as a spec.
    if (value === null || value === undefined || key === 'specVersion') continue;
    const item = XML_LISTS[key];
    if (item !== undefined && Array.isArray(value)) body[key] = value.length === 0 ? '' : { [item]: value };
    else if (key === 'parent' && typeof value === 'object') body[key] = xmlShape(value as Record<string, unknown>);
    else body[key] = value;
  }
  return body;
}

/** The spec as XML (docs/spec-format.md), e.g. `<image><packages><package>hello</package></packages></image>`. */
export function specXml(spec: Record<string, unknown>): string {
  const builder = new XMLBuilder({ format: true, indentBy: '  ' });
  return `<?xml version="1.0" encoding="UTF-8"?>\n${builder.build({ image: xmlShape(spec) }) as string}`;
}
