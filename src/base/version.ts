/** osfarm's version, read once from its package.json ("unknown" if that cannot be read). */
import { readFileSync } from 'node:fs';

function read(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export const VERSION = read();

/** How osfarm names itself to peers (HELLO, Server, User-Agent). */
export const SOFTWARE = `osfarm ${VERSION}`;
