/**
 * An example service on osfarm's API: an HTTP endpoint that builds an image on request
 * and pushes it to a receiver, the way a build farm's front end or a CI hook would.
 *
 *   node --import tsx examples/build-service.ts --receiver HOST:PORT --token-file FILE \
 *     [--listen 127.0.0.1:8090] [--repo DIR] [--stages DIR] [--work-dir DIR]
 *
 * POST /images with an appliance spec as JSON (name, packages, hostname, files with
 * `content`, commands…): the service puts it on its own core (Debian bookworm minbase),
 * validates it (422 with every issue), builds it with build() (stages cached: a second
 * appliance reuses the core), and pushes each image with push() (only the blocks the
 * receiver lacks). The answer streams NDJSON events, `{ type, … }` as osfarm reports them;
 * the last line is `{ type: 'result', result: { specDigest, cached, images } }` or
 * `{ type: 'error', error: { code, message } }`. A client that hangs up cancels its build,
 * and builds run one at a time. GET /healthz answers `{ ok, version }`. SIGINT or SIGTERM
 * cancels the running build, waits for its teardown and exits.
 *
 * It builds as root (chroot, mounts) and runs what a spec asks in the chroot: listen on
 * loopback, or put an authenticating proxy in front.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { parseArgs } from 'node:util';

import {
  build,
  type BuildEvent,
  defaultRepositoryPath,
  errorJson,
  hostPathIssues,
  OsfarmError,
  push,
  type PushResult,
  resolveToken,
  validateSpec,
  VERSION,
} from 'osfarm';

/** The service's core: every request is an appliance on it, so the core stage is built once. */
const CORE = { name: 'service-core', distribution: 'debian', release: 'bookworm', groups: ['minbase'] };

/** The largest request body read (a spec, not an image). */
const MAX_BODY = 256 << 10;

const { values: args } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:8090' },
    receiver: { type: 'string' },
    'token-file': { type: 'string' },
    repo: { type: 'string' },
    stages: { type: 'string' },
    'work-dir': { type: 'string' },
  },
});
if (!args.receiver) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'give --receiver HOST:PORT (an osfarm receive)');
const receiver = args.receiver;
const repo = args.repo ?? defaultRepositoryPath();
// The receiver's token from --token-file or $OSFARM_TOKEN, never from the command line.
const token = resolveToken({ tokenFile: args['token-file'] });

/** What the answer streams: the build's events, then the push's, then the result or the error. */
type ServiceEvent =
  | Exclude<BuildEvent, { type: 'result' }>
  | { type: 'phase'; phase: 'push'; elapsedMs: number }
  | { type: 'progress'; phase: 'push'; done: number; total: number; detail: string }
  | { type: 'result'; result: unknown }
  | { type: 'error'; error: { code: string; message: string } };

/** One build after the other: a build takes the machine's CPU and disk. */
let queue: Promise<unknown> = Promise.resolve();
const running = new Set<AbortController>();

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(body)}\n`);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `the request body is over ${MAX_BODY} bytes: send a spec, not files`);
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'the body is not JSON: send the appliance spec as a JSON object');
  }
}

/** POST /images: validate, then build and push in the queue, streaming the events. */
async function buildAndPush(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readJson(req);
  if (typeof body !== 'object' || body === null || Array.isArray(body) || 'parent' in body) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', 'send an appliance spec as a JSON object, without `parent` (the service builds on its own core)');
  }
  // The spec may not read the service's files; everything else is checked by osfarm.
  const raw = { ...body, parent: CORE };
  const checked = validateSpec(raw, { baseDir: '/nonexistent/build-service' });
  const issues = [...hostPathIssues(raw), ...(checked.valid ? [] : checked.issues)];
  if (issues.length > 0 || !checked.valid) {
    send(res, 422, { error: { code: 'OSFARM_BAD_SPEC', message: 'the spec is invalid', issues } });
    return;
  }
  const spec = checked.spec;

  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  const write = (e: ServiceEvent) => void (res.destroyed || res.write(`${JSON.stringify(e)}\n`));
  const controller = new AbortController();
  // A client that hangs up before the end does not want the image any more.
  res.once('close', () => {
    if (!res.writableFinished) controller.abort(new DOMException('the client hung up', 'AbortError'));
  });
  const job = queue.then(async () => {
    controller.signal.throwIfAborted();
    running.add(controller);
    try {
      const built = await build(spec, {
        repo,
        stages: args.stages,
        workDir: args['work-dir'],
        signal: controller.signal,
        handleSignals: false, // the service handles SIGINT/SIGTERM itself
        onEvent: (e) => e.type !== 'result' && write(e),
      });
      write({ type: 'phase', phase: 'push', elapsedMs: built.durationMs });
      const pushed: PushResult[] = [];
      for (const output of built.outputs) {
        pushed.push(
          await push(output.digest, receiver, {
            repo,
            token,
            name: `${built.name}-${output.format}`,
            signal: controller.signal,
            onEvent: (e) => e.type === 'progress' && write({ type: 'progress', phase: 'push', done: e.done, total: e.total, detail: output.format }),
          }),
        );
      }
      const images = built.outputs.map((o, i) => ({ format: o.format, digest: o.digest, size: o.size, sentBlocks: pushed[i]!.blocksSent, blockCount: pushed[i]!.blockCount }));
      write({ type: 'result', result: { specDigest: built.specDigest, cached: built.cached, stages: built.stages.map((s) => ({ tag: s.tag, hit: s.hit })), images } });
      res.end();
    } finally {
      running.delete(controller);
    }
  });
  queue = job.catch(() => {});
  try {
    await job;
  } catch (err) {
    write({ type: 'error', ...errorJson(err) });
    res.end();
  }
}

const server = createServer((req, res) => {
  const route = `${req.method} ${new URL(req.url ?? '/', 'http://service').pathname}`;
  const handle = route === 'POST /images' ? buildAndPush(req, res) : route === 'GET /healthz' ? Promise.resolve(send(res, 200, { ok: true, version: VERSION })) : Promise.reject(new OsfarmError('OSFARM_NOT_FOUND', `no route ${route}: POST /images or GET /healthz`));
  handle.catch((err: unknown) => {
    const body = errorJson(err);
    if (res.headersSent) res.end();
    else send(res, body.error.code === 'OSFARM_NOT_FOUND' ? 404 : body.error.code === 'OSFARM_INTERNAL' ? 500 : 400, body);
  });
});

const at = args.listen.lastIndexOf(':');
server.listen(Number(args.listen.slice(at + 1)), args.listen.slice(0, at), () => {
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  // One JSON line on stdout says where it listens (port 0 picks a free one).
  process.stdout.write(`${JSON.stringify({ type: 'listening', url: `http://${args.listen.slice(0, at)}:${port}` })}\n`);
});

async function stop(): Promise<void> {
  server.close();
  for (const c of running) c.abort(new DOMException('the service is stopping', 'AbortError'));
  await queue; // the running build tears its chroot down before the process ends
  server.closeAllConnections();
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void stop());
