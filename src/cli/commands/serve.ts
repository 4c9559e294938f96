import { createPullHandler, listenHttp, type PullServeStats } from '../../transfer/http-server.js';
import { parseAddress } from '../../transfer/util.js';
import { Repository } from '../../repo/index.js';
import { type Command, str } from '../command.js';
import { bytes, count } from '../format.js';

const command: Command<Omit<PullServeStats, 'active'>> = {
  name: 'serve',
  usage: 'serve --listen <host:port> [--repo DIR] [--max-requests N]',
  options: {
    listen: { type: 'string', short: 'l' },
    'max-requests': { type: 'string' },
  },
  async run(args, ctx) {
    const listen = str(args, 'listen');
    if (!listen) throw new RangeError('serve needs --listen <host:port> (e.g. 0.0.0.0:8080)');
    const { host, port } = parseAddress(listen, '0.0.0.0');
    Repository.open(ctx.repoPath); // refuse a missing or damaged repository before listening
    const maxRequests = str(args, 'max-requests');
    if (maxRequests !== undefined && !/^[1-9]\d*$/.test(maxRequests)) throw new RangeError(`--max-requests: '${maxRequests}' is not a positive whole number`);
    const pullHandler = createPullHandler({ repoPath: ctx.repoPath, maxConcurrent: maxRequests === undefined ? undefined : Number(maxRequests) });
    const { server, address } = await listenHttp({ host, port, handlers: [pullHandler] });
    const where = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
    ctx.info(`serving ${ctx.repoPath} on ${where} (pull ${where}/images/<digest or name>)`);
    ctx.event({ event: 'listening', address: address.address, port: address.port, repo: ctx.repoPath });
    await new Promise<void>((resolve) => {
      if (ctx.signal.aborted) resolve();
      ctx.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const { active: _active, ...stats } = pullHandler.stats;
    return stats;
  },
  render(r) {
    return `stopped after ${count(r.requests)} requests, ${bytes(r.bytesSent)} sent`;
  },
};
export default command;
