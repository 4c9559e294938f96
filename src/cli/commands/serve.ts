/** `osfarm serve`: the repository over HTTP for pull, and the web GUI and REST API on the same port. */
import { invalidArgument } from '../../base/errors.js';
import { openOrCreateRepository } from '../../app/repository.js';
import { serveHandlers } from '../../app/serve.js';
import { FarmClient } from '../../farm/client.js';
import type { SchedulingMode } from '../../farm/scheduler.js';
import { parseAddress } from '../../transfer/address.js';
import { createPullHandler, type PullServeStats } from '../../transfer/http/serve.js';
import { createWebHandler, defaultTokenFile } from '../../web/index.js';
import { type Command, flag, str, untilAborted, wholeNumber } from '../command.js';
import { bytes, count } from '../format.js';
import { SERVER_TLS_OPTIONS, serverTls } from '../tls.js';
import { certificateFingerprint } from '../../trust/tls.js';

const command: Command<Omit<PullServeStats, 'active'>> = {
  name: 'serve',
  section: 'transfer',
  summary: 'serve the repository over HTTP for pull, with the web GUI and REST API',
  usage: ['--listen HOST:PORT (--tls-cert FILE --tls-key FILE | --insecure) [--max-requests N] [--token-file F] [--read-only] [--queue redis://HOST:PORT [--schedule cache-aware|plain|round-robin] [--affinity-wait-ms N]]'],
  description:
    'Pull URLs are static-compatible (/images/DIGEST/…), so any web server can serve a copy of the repository too (docs/http.md). The GUI is at /, the REST API at /api/docs (docs/web.md); both need the web token, which the first start writes to the token file and every start names. Without TLS it refuses to start unless told --insecure (docs/trust.md). Runs until Ctrl-C. A missing repository is created (and said so). With --queue, builds go to a farm of osfarm workers on that Redis (docs/farm.md).',
  options: {
    listen: { type: 'string', short: 'l', value: 'HOST:PORT', description: 'where to listen, e.g. 0.0.0.0:8080 (:8080 is every interface)' },
    'max-requests': { type: 'string', value: 'N', description: 'pull requests served at once; more wait' },
    'token-file': { type: 'string', value: 'F', complete: 'file', description: 'the web token\'s file (default ~/.config/osfarm/web-token); created with a new token if missing' },
    'read-only': { type: 'boolean', description: 'anyone may browse the GUI and read the API without the token; changes still need it' },
    queue: { type: 'string', value: 'URL', description: "send builds to a farm of osfarm workers: the farm's Redis, redis://HOST:PORT (docs/farm.md)" },
    schedule: { type: 'string', value: 'MODE', choices: ['cache-aware', 'plain', 'round-robin'], description: 'with --queue: cache-aware (default) sends a job to a worker holding its stages; plain: to the first free worker; round-robin: to each worker in turn' },
    'affinity-wait-ms': { type: 'string', value: 'N', description: 'with --queue: how long a job waits for a worker holding its stages before any worker may take it, in ms' },
    ...SERVER_TLS_OPTIONS,
  },
  examples: [
    { command: 'osfarm serve --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem --repo /srv/osfarm', what: 'serve /srv/osfarm over HTTPS for pull, with the GUI at https://HOST:8443/' },
    { command: 'osfarm serve --listen 127.0.0.1:8080 --insecure --read-only', what: 'a local, browse-only GUI over plain HTTP' },
  ],
  async run(args, ctx) {
    const listen = str(args, 'listen');
    if (!listen) throw invalidArgument('serve needs --listen HOST:PORT (e.g. 0.0.0.0:8080)');
    const { host, port } = parseAddress(listen, '0.0.0.0');
    const maxConcurrent = wholeNumber(args, 'max-requests', 1, 65_536);
    const tls = serverTls(args, 'serve');
    const pullHandler = createPullHandler({ repo: ctx.repoPath, maxConcurrent });
    const queue = str(args, 'queue');
    const schedule = str(args, 'schedule') ?? 'cache-aware';
    if (schedule !== 'cache-aware' && schedule !== 'plain' && schedule !== 'round-robin') throw invalidArgument(`--schedule ${schedule}: cache-aware, plain or round-robin`);
    if (!queue && (str(args, 'schedule') || str(args, 'affinity-wait-ms'))) throw invalidArgument('--schedule and --affinity-wait-ms are for a farm: give --queue redis://host:port too');
    const farm = queue
      ? await FarmClient.open({ url: queue, repo: ctx.repoPath, mode: schedule as SchedulingMode, waitMs: wholeNumber(args, 'affinity-wait-ms', 0, 3_600_000) })
      : undefined;
    const web = await createWebHandler({ repo: ctx.repoPath, tokenFile: str(args, 'token-file') ?? defaultTokenFile(), readOnly: flag(args, 'read-only'), ...(farm ? { farm } : {}) });
    // Bind first: a port in use leaves no new repository behind.
    const serving = await serveHandlers({ host, port, handlers: [pullHandler, web.handler], onClose: () => web.close(), tls });
    try {
      // A damaged repository is refused here, before anyone is told to use the server.
      if (openOrCreateRepository(ctx.repoPath).created) {
        ctx.info(`created repository ${ctx.repoPath} (it did not exist)`);
        ctx.event({ type: 'repository-created', path: ctx.repoPath });
      }
    } catch (err) {
      await serving.close();
      throw err;
    }
    const { url, address } = serving;
    // The token itself only when it was just made; where it is, on every start.
    if (web.token.created) ctx.info(`web token (new, kept in ${web.token.path}, mode 0600): ${web.token.value}`);
    else ctx.info(`web token: in ${web.token.path}`);
    ctx.info(`serving ${ctx.repoPath} on ${url} (pull ${url}/images/<digest or name>; GUI ${url}/, API ${url}/api/docs)${farm ? `; builds go to the farm on ${queue} (${farm.scheduling.mode})` : ''}`);
    const fingerprint = tls ? certificateFingerprint(tls.cert) : undefined;
    if (fingerprint) ctx.info(`TLS certificate SHA-256 ${fingerprint}`);
    ctx.event({ type: 'listening', address: address.address, port: address.port, url, repo: ctx.repoPath, tokenFile: web.token.path, ...(farm ? { queue, schedule: farm.scheduling } : {}), ...(fingerprint ? { tlsFingerprint: fingerprint } : {}) });
    await untilAborted(ctx.signal);
    await serving.close();
    const { active: _active, ...stats } = pullHandler.stats;
    return stats;
  },
  render(r) {
    return `stopped after ${count(r.requests)} requests, ${bytes(r.bytesSent)} sent`;
  },
};
export default command;
