import { invalidArgument } from '../../base/errors.js';
import { serveHandlers } from '../../app/serve.js';
import { FarmClient } from '../../farm/client.js';
import type { SchedulingMode } from '../../farm/scheduler.js';
import { createPullHandler, type PullServeStats } from '../../transfer/http/serve.js';
import { parseAddress } from '../../transfer/address.js';
import { Repository } from '../../repo/index.js';
import { createWebHandler, defaultTokenFile } from '../../web/index.js';
import { type Command, flag, str, wholeNumber } from '../command.js';
import { bytes, count } from '../format.js';
import { SERVER_TLS_OPTIONS, serverTls } from '../tls.js';
import { certificateFingerprint } from '../../trust/tls.js';

const command: Command<Omit<PullServeStats, 'active'>> = {
  name: 'serve',
  usage: 'serve --listen <host:port> [--repo DIR] (--tls-cert FILE --tls-key FILE | --insecure) [--max-requests N] [--token-file F] [--read-only]\n      [--queue redis://host:port [--schedule cache-aware|plain] [--affinity-wait-ms N]]\n(the GUI at /, the REST API at /api/docs; --read-only lets anyone browse without the token;\n --queue: builds go to a farm of osfarm workers on that Redis, see docs/farm.md)',
  options: {
    listen: { type: 'string', short: 'l' },
    'max-requests': { type: 'string' },
    'token-file': { type: 'string' },
    'read-only': { type: 'boolean' },
    queue: { type: 'string' },
    schedule: { type: 'string' },
    'affinity-wait-ms': { type: 'string' },
    ...SERVER_TLS_OPTIONS,
  },
  async run(args, ctx) {
    const listen = str(args, 'listen');
    if (!listen) throw invalidArgument('serve needs --listen <host:port> (e.g. 0.0.0.0:8080)');
    const { host, port } = parseAddress(listen, '0.0.0.0');
    const maxConcurrent = wholeNumber(args, 'max-requests', 1, 65_536);
    const tls = serverTls(args, 'serve');
    Repository.open(ctx.repoPath); // refuse a missing or damaged repository before listening
    const pullHandler = createPullHandler({ repo: ctx.repoPath, maxConcurrent });
    const queue = str(args, 'queue');
    const schedule = str(args, 'schedule') ?? 'cache-aware';
    if (schedule !== 'cache-aware' && schedule !== 'plain') throw invalidArgument(`--schedule ${schedule}: cache-aware or plain`);
    if (!queue && (str(args, 'schedule') || str(args, 'affinity-wait-ms'))) throw invalidArgument('--schedule and --affinity-wait-ms are for a farm: give --queue redis://host:port too');
    const farm = queue
      ? await FarmClient.open({ url: queue, repo: ctx.repoPath, mode: schedule as SchedulingMode, waitMs: wholeNumber(args, 'affinity-wait-ms', 0, 3_600_000) })
      : undefined;
    const web = await createWebHandler({ repo: ctx.repoPath, tokenFile: str(args, 'token-file') ?? defaultTokenFile(), readOnly: flag(args, 'read-only'), ...(farm ? { farm } : {}) });
    if (web.token.created) {
      // Shown this once; afterwards it is only in the file.
      process.stderr.write(`web token (kept in ${web.token.path}, mode 0600): ${web.token.value}\n`);
    }
    const serving = await serveHandlers({ host, port, handlers: [pullHandler, web.handler], onClose: () => web.close(), tls });
    const { url, address } = serving;
    ctx.info(`serving ${ctx.repoPath} on ${url} (pull ${url}/images/<digest or name>; GUI ${url}/, API ${url}/api/docs)${farm ? `; builds go to the farm on ${queue} (${farm.scheduling.mode})` : ''}`);
    const fingerprint = tls ? certificateFingerprint(tls.cert) : undefined;
    if (fingerprint) ctx.info(`TLS certificate SHA-256 ${fingerprint}`);
    ctx.event({ event: 'listening', address: address.address, port: address.port, repo: ctx.repoPath, ...(farm ? { queue, schedule: farm.scheduling } : {}), ...(fingerprint ? { tlsFingerprint: fingerprint } : {}) });
    await new Promise<void>((resolve) => {
      if (ctx.signal.aborted) resolve();
      ctx.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await serving.close();
    const { active: _active, ...stats } = pullHandler.stats;
    return stats;
  },
  render(r) {
    return `stopped after ${count(r.requests)} requests, ${bytes(r.bytesSent)} sent`;
  },
};
export default command;
