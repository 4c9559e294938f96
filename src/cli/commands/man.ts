/** `osfarm man`: the osfarm(1) manual page, made from the command table (the build writes it to dist/man/osfarm.1). */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

import { type Command, str } from '../command.js';
import { manPage } from '../man.js';
import { loadAll } from '../table.js';

const command: Command<{ page: string; output: string | null }> = {
  name: 'man',
  section: 'shell',
  summary: 'print the manual page (roff), or write it to a file',
  usage: ['[-o FILE]'],
  options: { output: { type: 'string', short: 'o', value: 'FILE', complete: 'file', description: 'write the page to FILE (atomically) instead of printing it' } },
  examples: [
    { command: 'osfarm man | man -l -', what: 'read the manual page' },
    { command: 'osfarm man -o /usr/local/share/man/man1/osfarm.1', what: 'install it for man osfarm' },
  ],
  async run(args) {
    const page = manPage(await loadAll());
    const output = str(args, 'output') ?? null;
    if (output) {
      mkdirSync(dirname(output), { recursive: true });
      writeFileSync(`${output}.tmp`, page);
      renameSync(`${output}.tmp`, output);
    }
    return { page, output };
  },
  render: (r) => (r.output ? `wrote ${r.output}` : r.page.trimEnd()),
};
export default command;
