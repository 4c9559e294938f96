/** The OpenAPI 3.1 document, written from the routes' own documentation (api.ts). */
import type { DocumentedRoute, RouteDoc } from './api.js';

const ERROR = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string', description: 'stable code such as OSFARM_BAD_SPEC, OSFARM_UNAUTHORIZED, OSFARM_NOT_FOUND, OSFARM_LOCKED' },
        message: { type: 'string', description: 'what went wrong and what to do' },
        issues: { type: 'array', description: 'for OSFARM_BAD_SPEC: one entry per bad field', items: { type: 'object', properties: { path: { type: 'string' }, message: { type: 'string' } } } },
      },
    },
  },
};

const errorResponse = (description: string) => ({ description, content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } });

function operation(route: DocumentedRoute): Record<string, unknown> {
  const doc: RouteDoc = route.doc;
  const params = [...route.path.matchAll(/:([a-zA-Z]+)/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'string' } }));
  for (const [name, q] of Object.entries(doc.query ?? {})) params.push({ name, in: 'query', required: q.required ?? false, schema: { type: 'string' }, description: q.description } as never);
  const op: Record<string, unknown> = {
    tags: [doc.tag],
    summary: doc.summary,
    operationId: `${route.method.toLowerCase()}${route.path.replace(/[/:.]([a-z])/gi, (_, c: string) => c.toUpperCase()).replace(/[^A-Za-z0-9]/g, '')}`,
    parameters: params,
    security: route.open ? [{}] : route.read ? [{ bearer: [] }, { cookie: [] }, {}] : [{ bearer: [] }, { cookie: [] }],
    responses: {
      [String(doc.response.status)]: { description: doc.response.description, content: { [doc.response.type ?? 'application/json']: { schema: {} } } },
      '400': errorResponse('invalid request (OSFARM_INVALID_ARGUMENT)'),
      ...(route.open && route.method !== 'POST' ? {} : { '401': errorResponse(route.open ? 'wrong token' : route.read ? 'no valid token (unless the server allows read-only browsing)' : 'no valid token') }),
      ...(route.path.includes(':') ? { '404': errorResponse('no such image or job') } : {}),
      ...(doc.tag === 'compose' || route.path === '/api/builds' ? { '422': errorResponse('invalid spec (OSFARM_BAD_SPEC, with issues)') } : {}),
      ...(route.method === 'POST' && doc.response.status === 202 ? { '503': errorResponse('the queue is full (OSFARM_LOCKED)') } : {}),
    },
  };
  if (doc.body) {
    const properties: Record<string, unknown> = {};
    const required: string[] = [];
    for (const [name, f] of Object.entries(doc.body)) {
      properties[name] = { type: f.type ?? 'string', description: f.description };
      if (f.required) required.push(name);
    }
    op.requestBody = { required: true, content: { 'application/json': { schema: { type: 'object', properties, ...(required.length ? { required } : {}) } } } };
  }
  return op;
}

export function openApiDocument(routes: DocumentedRoute[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const p = r.path.replace(/:([a-zA-Z]+)/g, '{$1}');
    paths[p] ??= {};
    paths[p][r.method.toLowerCase()] = operation(r);
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'osfarm web API',
      version,
      description: 'Build, keep, compare and move Linux images. Send the token as `Authorization: Bearer <token>` (or log in once with POST /api/session, which sets an HttpOnly cookie). With --read-only, GET routes need no token.',
    },
    paths,
    components: {
      schemas: { Error: ERROR },
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'the token osfarm serve printed at first start (in its token file)' },
        cookie: { type: 'apiKey', in: 'cookie', name: 'osfarm_<id>', description: 'set by POST /api/session; the name differs per server (browsers share cookies between ports of one host)' },
      },
    },
  };
}

/** A readable page over the document, with no script from elsewhere. */
export function docsPage(doc: Record<string, unknown>): string {
  const esc = (s: unknown) => String(s ?? '').replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const paths = doc.paths as Record<string, Record<string, { summary: string; tags: string[]; parameters: { name: string; in: string; required: boolean; description?: string }[]; requestBody?: { content: { 'application/json': { schema: { properties: Record<string, { type: string; description: string }>; required?: string[] } } } }; responses: Record<string, { description: string }> }>>;
  const rows: string[] = [];
  for (const [path, ops] of Object.entries(paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const params = op.parameters.map((p) => `<li><code>${esc(p.name)}</code> (${esc(p.in)}${p.required ? ', required' : ''}) ${esc(p.description)}</li>`).join('');
      const schema = op.requestBody?.content['application/json'].schema;
      const body = schema ? Object.entries(schema.properties).map(([n, f]) => `<li><code>${esc(n)}</code> ${esc(f.type)}${schema.required?.includes(n) ? ', required' : ''}: ${esc(f.description)}</li>`).join('') : '';
      const responses = Object.entries(op.responses).map(([s, r]) => `<li><b>${esc(s)}</b> ${esc(r.description)}</li>`).join('');
      // What the page's "try it" form (assets/docs.js) needs: the query's names and a body to edit.
      const query = op.parameters.filter((p) => p.in === 'query').map((p) => p.name).join(',');
      // The body's required fields, or else its first (the others are alternatives or options).
      const fields = schema ? Object.entries(schema.properties) : [];
      const shown = fields.filter(([n]) => schema?.required?.includes(n));
      const skeleton = JSON.stringify(Object.fromEntries((shown.length > 0 ? shown : fields.slice(0, 1)).map(([n, f]) => [n, f.type === 'object' ? {} : f.type === 'boolean' ? false : ''])));
      rows.push(`<section class="op" data-method="${esc(method.toUpperCase())}" data-path="${esc(path)}" data-query="${esc(query)}"${schema ? ` data-body="${esc(skeleton)}"` : ''}><h3><span class="m ${esc(method)}">${esc(method.toUpperCase())}</span> <code>${esc(path)}</code></h3><p>${esc(op.summary)}</p>${params ? `<h4>Parameters</h4><ul>${params}</ul>` : ''}${body ? `<h4>JSON body</h4><ul>${body}</ul>` : ''}<h4>Responses</h4><ul>${responses}</ul></section>`);
    }
  }
  const info = doc.info as { title: string; version: string; description: string };
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${esc(info.title)}</title><link rel="stylesheet" href="/assets/style.css"></head><body class="docs"><main><h1>${esc(info.title)} ${esc(info.version)}</h1><p>${esc(info.description)}</p><p>Machine-readable: <a href="/api/openapi.json">/api/openapi.json</a> (OpenAPI 3.1). Each operation below can be tried from this page.</p>${rows.join('\n')}</main><script type="module" src="/assets/docs.js"></script></body></html>`;
}
