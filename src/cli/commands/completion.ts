/** `osfarm completion SHELL`: the shell completion script, made from the command table. */
import { invalidArgument } from '../../base/errors.js';
import { didYouMean } from '../../base/suggest.js';
import type { Command } from '../command.js';
import { completionScript, type Shell, SHELLS } from '../completion.js';
import { loadAll } from '../table.js';

const command: Command<{ shell: Shell; script: string }> = {
  name: 'completion',
  section: 'shell',
  summary: 'print the shell completion script for bash, zsh or fish',
  usage: ['bash|zsh|fish'],
  operands: { complete: 'none', min: 1, max: 1 },
  examples: [
    { command: 'source <(osfarm completion bash)', what: 'complete osfarm commands, flags and values in this bash session' },
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a zsh command line, not a template
    { command: 'osfarm completion zsh > "${fpath[1]}/_osfarm"', what: 'install the zsh completion (start a new shell)' },
    { command: 'osfarm completion fish > ~/.config/fish/completions/osfarm.fish', what: 'install the fish completion' },
  ],
  async run(args) {
    const shell = args.positionals[0]!;
    if (!(SHELLS as readonly string[]).includes(shell)) throw invalidArgument(`no completion for ${JSON.stringify(shell)}${didYouMean(shell, SHELLS, 1)}: give bash, zsh or fish`);
    return { shell: shell as Shell, script: completionScript(shell as Shell, await loadAll()) };
  },
  render: (r) => r.script.trimEnd(),
};
export default command;
