import { invalidArgument } from '../../base/errors.js';
import { Receiver, type TransferReport } from '../../transfer/push/receive.js';
import { resolveToken } from '../../transfer/push/auth.js';
import { parseAddress } from '../../transfer/address.js';
import { type Command, flag, str, strs, wholeNumber } from '../command.js';
import { bytes, count } from '../format.js';
import { SERVER_TLS_OPTIONS, serverTls } from '../tls.js';
import { certificateFingerprint } from '../../trust/tls.js';

function line(r: TransferReport): string {
  if (r.error) {
    return `${r.remote}: failed: ${r.error.message} (${r.error.code})${r.keptPartial ? '; the partial image is kept for a retry' : '; nothing was kept'}`;
  }
  if (r.alreadyPresent) return `${r.remote}: ${r.digest}${r.name ? ` (${r.name})` : ''} already here`;
  return (
    `${r.remote}: received ${r.digest}${r.name ? ` (${r.name})` : ''}, ${bytes(r.size ?? 0)}: ` +
    `${count(r.receivedBlocks)} blocks over the network, ${count(r.localBlocks)} from the repository, ` +
    `${count(r.resumedBlocks)} resumed, in ${r.seconds.toFixed(2)} s`
  );
}

const command: Command<{ transfers: number; failed: number }> = {
  name: 'receive',
  usage: 'receive --listen <host:port> [--repo DIR] [--token T | --token-file F | $OSFARM_TOKEN] (--tls-cert FILE --tls-key FILE | --insecure) [--trust KEYFILE]... [--max-transfers N] [--idle-timeout S]',
  options: {
    listen: { type: 'string', short: 'l' },
    token: { type: 'string' },
    'token-file': { type: 'string' },
    ...SERVER_TLS_OPTIONS,
    trust: { type: 'string', multiple: true },
    'max-transfers': { type: 'string' },
    'idle-timeout': { type: 'string' },
  },
  async run(args, ctx) {
    const listen = str(args, 'listen');
    if (!listen) throw invalidArgument('receive needs --listen <host:port> (e.g. 0.0.0.0:7070)');
    const { host, port } = parseAddress(listen, '0.0.0.0');
    const token = resolveToken({ token: str(args, 'token'), tokenFile: str(args, 'token-file') });
    const tls = serverTls(args, 'receive');
    const idle = wholeNumber(args, 'idle-timeout', 1, 86_400);
    const receiver = new Receiver({
      repo: ctx.repoPath,
      token,
      insecure: flag(args, 'insecure'),
      tls,
      trust: strs(args, 'trust'),
      maxTransfers: wholeNumber(args, 'max-transfers', 1, 1024),
      idleTimeoutMs: idle === undefined ? undefined : idle * 1000,
    });
    receiver.on('repository-created', (e: { path: string }) => {
      ctx.info(`created repository ${e.path}`);
      ctx.event({ event: 'repository-created', path: e.path });
    });
    receiver.on('transfer-start', (e: { remote: string; size: number; name?: string }) => {
      ctx.info(`${e.remote}: receiving ${bytes(e.size)}${e.name ? ` (${e.name})` : ''}`);
      ctx.event({ event: 'transfer-start', ...e });
    });
    for (const kind of ['transfer-done', 'transfer-failed'] as const) {
      receiver.on(kind, (r: TransferReport) => {
        ctx.info(line(r));
        ctx.event({ event: kind, ...r });
      });
    }
    receiver.on('connection-refused', (e: { remote: string; error: { code: string; message: string } }) => {
      ctx.info(`${e.remote}: refused: ${e.error.message} (${e.error.code})`);
      ctx.event({ event: 'connection-refused', ...e });
    });
    receiver.on('busy', (e: { refused: number; message: string }) => {
      ctx.info(`turned away ${count(e.refused)} connections in 5 s (OSFARM_LOCKED), the last: ${e.message}`);
      ctx.event({ event: 'busy', ...e });
    });
    const addr = await receiver.listen(host, port);
    const fingerprint = tls ? certificateFingerprint(tls.cert) : undefined;
    ctx.info(`receiving into ${ctx.repoPath} on ${addr.address}:${addr.port}${token ? '' : ' (insecure: no token)'}${fingerprint ? ` over TLS, certificate SHA-256 ${fingerprint}` : ' (insecure: no TLS)'}`);
    ctx.event({ event: 'listening', address: addr.address, port: addr.port, repo: ctx.repoPath, ...(fingerprint ? { tlsFingerprint: fingerprint } : {}) });
    await new Promise<void>((resolve) => {
      if (ctx.signal.aborted) resolve();
      ctx.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await receiver.close();
    return { transfers: receiver.totals.transfers, failed: receiver.totals.failed };
  },
  render(r) {
    return `stopped after ${count(r.transfers)} transfers (${count(r.failed)} failed)`;
  },
};
export default command;
