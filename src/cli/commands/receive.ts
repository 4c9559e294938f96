/** `osfarm receive`: accept pushed images into the repository. */
import { invalidArgument } from '../../base/errors.js';
import { parseAddress } from '../../transfer/address.js';
import { resolveToken } from '../../transfer/push/auth.js';
import { Receiver, type ReceiverTotals, type TransferReport } from '../../transfer/push/receive.js';
import { type Command, flag, str, strs, untilAborted, wholeNumber } from '../command.js';
import { bytes, count, tagList } from '../format.js';
import { SERVER_TLS_OPTIONS, serverTls } from '../tls.js';

function line(r: TransferReport): string {
  if (r.error) {
    return `${r.remote}: failed: ${r.error.message} (${r.error.code})${r.keptPartial ? '; the partial image is kept for a retry' : '; nothing was kept'}`;
  }
  if (r.alreadyPresent) return `${r.remote}: ${r.digest}${r.tags?.length ? ` (${tagList(r.tags)})` : ''} already here`;
  return (
    `${r.remote}: received ${r.digest}${r.tags?.length ? ` (${tagList(r.tags)})` : ''}, ${bytes(r.size ?? 0)}: ` +
    `${count(r.receivedBlocks)} blocks over the network, ${count(r.localBlocks)} from the repository, ` +
    `${count(r.resumedBlocks)} resumed, in ${r.seconds.toFixed(2)} s`
  );
}

const command: Command<ReceiverTotals> = {
  name: 'receive',
  section: 'transfer',
  summary: 'accept pushed images into the repository (TCP, shared token, TLS)',
  usage: ['--listen HOST:PORT [--token T | --token-file F] (--tls-cert FILE --tls-key FILE | --insecure) [--trust KEYFILE]... [--max-transfers N] [--idle-timeout S]'],
  description:
    'Runs until Ctrl-C. Without TLS it refuses to start unless told --insecure, which also allows running without a token (docs/trust.md). With --trust, or a repository that trusts keys (osfarm keys trust), an image must come signed by one of those keys. A missing repository is created (and said so) once the port is bound; a port in use is refused before anything is created.',
  options: {
    listen: { type: 'string', short: 'l', value: 'HOST:PORT', description: 'where to listen, e.g. 0.0.0.0:7070 (:7070 is every interface)' },
    token: { type: 'string', value: 'T', description: 'the shared token pushers must know (default $OSFARM_TOKEN); prefer --token-file' },
    'token-file': { type: 'string', value: 'F', complete: 'file', description: 'read the shared token from F' },
    ...SERVER_TLS_OPTIONS,
    insecure: { type: 'boolean', description: 'run without TLS, and without a token if none is given (a trusted network only)' },
    trust: { type: 'string', multiple: true, value: 'KEYFILE', complete: 'file', description: 'accept only images signed by this public key (minisign format; may be repeated)' },
    'max-transfers': { type: 'string', value: 'N', description: 'transfers at once (default 4)' },
    'idle-timeout': { type: 'string', value: 'S', description: 'drop a connection silent for S seconds (default 60)' },
  },
  examples: [
    { command: 'osfarm receive --listen 0.0.0.0:7070 --token-file /etc/osfarm/token --tls-cert cert.pem --tls-key key.pem --repo /srv/osfarm', what: 'accept pushes over TLS into /srv/osfarm from anyone who knows the token' },
    { command: 'osfarm --json receive --listen 127.0.0.1:7070 --insecure', what: 'a local receiver whose events a script reads (one JSON object a line)' },
  ],
  async run(args, ctx) {
    const listen = str(args, 'listen');
    if (!listen) throw invalidArgument('receive needs --listen HOST:PORT (e.g. 0.0.0.0:7070)');
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
      onEvent: (e) => {
        // The totals are the command's result, printed once, last.
        if (e.type === 'result') return;
        ctx.event(e);
        if (e.type === 'repository-created') ctx.info(`created repository ${e.path} (it did not exist)`);
        else if (e.type === 'listening') {
          const how = e.tlsFingerprint ? ` over TLS, certificate SHA-256 ${e.tlsFingerprint}` : ' (insecure: no TLS)';
          ctx.info(`receiving into ${e.repo} on ${e.address}:${e.port}${token ? '' : ' (insecure: no token)'}${how}`);
        } else if (e.type === 'busy') ctx.info(`turned away ${count(e.refused)} connections in 5 s (OSFARM_LOCKED), the last: ${e.message}`);
        else if (e.type === 'transfer-start') ctx.info(`${e.remote}: receiving ${bytes(e.size)}${e.name ? ` (${e.name})` : ''}`);
        else if (e.type === 'connection-refused') ctx.info(`${e.remote}: refused: ${e.error.message} (${e.error.code})`);
        else ctx.info(line(e));
      },
    });
    await receiver.listen(host, port);
    await untilAborted(ctx.signal);
    await receiver.close();
    return receiver.totals;
  },
  render(r) {
    return `stopped after ${count(r.transfers)} transfers (${count(r.failed)} failed), ${bytes(r.receivedBytes)} received as ${bytes(r.wireBytesReceived)} on the wire`;
  },
};
export default command;
