// @ts-check
// Compose: distribution, release, architecture, groups, packages (searched in the real index;
// one the index lacks is marked as it is added), outputs, root password, boot and first-boot
// settings, parent; the request checksum and whether it is already built.
import { api, debounce, el, notice, showError, short, bytes } from './lib.js';

const OUTPUTS = ['tar', 'tar.gz', 'ext4', 'disk', 'qcow2', 'squashfs', 'oci'];

export async function render(view) {
  const [catalog, repo] = await Promise.all([api('GET', '/api/distributions'), api('GET', '/api/images')]);
  /** @type {{ packages: string[], groups: Set<string>, outputs: Set<string> }} */
  const state = { packages: [], groups: new Set(['minbase']), outputs: new Set(['tar']) };

  const dist = el('select', { id: 'distribution' }, catalog.distributions.map((d) =>
    el('option', { value: d.name, disabled: !d.buildable, title: d.reason ?? '' }, d.buildable ? d.name : `${d.name} (not buildable here)`)));
  const release = el('select', { id: 'release' });
  const releaseText = el('input', { type: 'text', id: 'release-text', placeholder: 'release, e.g. 9', hidden: true });
  const arch = el('select', { id: 'architecture' }, catalog.architectures.map((a) =>
    el('option', { value: a.name, disabled: !a.available, selected: a.name === catalog.defaultArchitecture }, a.native ? a.name : `${a.name} (emulated)`)));
  const groups = el('div', { class: 'checks', id: 'groups' });
  const needs = el('p', { class: 'warn', id: 'needs' });
  const mirrors = el('textarea', { id: 'mirrors', rows: 2, placeholder: "one repository URL (or Debian \"deb …\" line) a line; empty: this machine's apt sources" });
  const name = el('input', { type: 'text', id: 'name', placeholder: 'default: distribution-release-architecture' });
  const password = el('input', { type: 'password', id: 'root-password', autocomplete: 'new-password', placeholder: 'leave empty to keep root locked' });
  const parent = el('select', { id: 'parent' }, el('option', { value: '' }, 'none (a core image)'),
    repo.images.filter((i) => i.specDigest).map((i) => el('option', { value: i.name ?? i.digest }, `${i.name ?? short(i.digest)} (${i.distribution} ${i.release} ${i.architecture})`)));
  const outputs = el('div', { class: 'checks', id: 'outputs' }, OUTPUTS.map((f) =>
    el('label', {}, el('input', { type: 'checkbox', value: f, checked: state.outputs.has(f), onchange: (e) => { e.target.checked ? state.outputs.add(f) : state.outputs.delete(f); check(); } }), f)));
  // Booting (docs/disk.md): a disk or qcow2 needs a kernel.
  const kernel = el('select', { id: 'kernel' }, el('option', { value: '' }, 'none'), el('option', { value: 'true' }, "the distribution's kernel"), el('option', { value: 'other' }, 'a kernel package…'));
  const kernelPackage = el('input', { type: 'text', id: 'kernel-package', placeholder: 'e.g. linux-image-cloud-amd64', hidden: true });
  const firmware = el('select', { id: 'firmware' }, ['', 'hybrid', 'uefi', 'bios'].map((f) => el('option', { value: f }, f || "the architecture's default")));
  const dhcp = el('input', { type: 'checkbox', id: 'network-dhcp' });
  const serial = el('input', { type: 'checkbox', id: 'serial-console', checked: true });
  const user = el('input', { type: 'text', id: 'ssh-user', value: 'root' });
  const keys = el('textarea', { id: 'ssh-keys', rows: 2, placeholder: 'SSH public keys (ssh-ed25519 AAAA…), one a line' });
  const cloudInit = el('select', { id: 'cloud-init' }, ['none', 'cloud', 'nocloud'].map((c) => el('option', { value: c }, c)));
  const chips = el('div', { class: 'chips', id: 'packages' });
  const search = el('input', { type: 'search', id: 'package-search', placeholder: 'search packages (Enter adds the name as typed)' });
  const results = el('div', { class: 'results', id: 'package-results', hidden: true });
  const indexInfo = el('p', { class: 'muted', id: 'index-info' });
  const digest = el('div', { id: 'spec-check' }, el('span', { class: 'muted' }, '…'));
  const buildButton = el('button', { class: 'primary', id: 'build' }, 'Build');

  const current = () => catalog.distributions.find((d) => d.name === dist.value);
  const releaseValue = () => (release.hidden ? releaseText.value.trim() : release.value);

  function fillDistribution() {
    const d = current();
    release.replaceChildren(...d.releases.map((r) => el('option', { value: r, selected: r === d.defaultRelease }, r)));
    release.hidden = d.releases.length === 0;
    releaseText.hidden = !release.hidden;
    state.groups = new Set(d.groups.includes('minbase') ? ['minbase'] : []);
    // A bootstrap variant is one choice (radio buttons); tasks and package groups add up (check boxes).
    const pick = (v) => {
      for (const x of d.variants) state.groups.delete(x);
      if (v) state.groups.add(v);
      check();
    };
    const tasks = d.groups.filter((g) => !d.variants.includes(g));
    groups.replaceChildren(
      ...(d.variants.length > 0 ? [el('fieldset', { id: 'variants' }, el('legend', {}, 'bootstrap variant (one; a child stage has its parent\'s)'),
        ...d.variants.map((v) => el('label', {}, el('input', { type: 'radio', name: 'variant', value: v, checked: state.groups.has(v), onchange: () => pick(v) }), v)))] : []),
      el('fieldset', { id: 'tasks' }, el('legend', {}, 'tasks and package groups (any number)'),
        ...tasks.map((g) => el('label', {}, el('input', { type: 'checkbox', value: g, checked: state.groups.has(g), onchange: (e) => { e.target.checked ? state.groups.add(g) : state.groups.delete(g); check(); } }), g))));
    indexInfo.textContent = '';
    needs.textContent = d.needs ?? '';
  }

  function renderChips() {
    chips.replaceChildren(...state.packages.map((p) => el('span', { class: 'chip', 'data-package': p }, p, el('button', { title: `remove ${p}`, onclick: () => { state.packages = state.packages.filter((x) => x !== p); renderChips(); check(); } }, '×'))));
    if (state.packages.length === 0) chips.append(el('span', { class: 'muted' }, 'no extra packages'));
  }
  // The spec check names each package the release's index lacks (spec.packages[i], with the closest names).
  function markPackages(issues) {
    const unknown = new Map();
    for (const i of issues ?? []) {
      const m = /^spec\.packages\[(\d+)\]$/.exec(i.path);
      if (m) unknown.set(state.packages[Number(m[1])], i.message);
    }
    for (const chip of /** @type {NodeListOf<HTMLElement>} */ (chips.querySelectorAll('.chip'))) {
      const message = unknown.get(chip.dataset.package);
      chip.classList.toggle('unknown', message !== undefined);
      chip.title = message ?? '';
    }
  }
  function addPackage(p) {
    if (p && !state.packages.includes(p)) state.packages.push(p);
    search.value = '';
    results.hidden = true;
    renderChips();
    check();
  }

  const runSearch = debounce(async () => {
    const q = search.value.trim();
    if (q.length < 2) {
      results.hidden = true;
      return;
    }
    try {
      const params = new URLSearchParams({ distribution: dist.value, release: releaseValue(), architecture: arch.value, q, limit: '40' });
      const r = await api('GET', `/api/packages?${params}`);
      indexInfo.textContent = `${r.index.count} packages in ${r.index.distribution} ${r.index.release} ${r.index.architecture} (apt index, ${r.index.source})`;
      results.replaceChildren(...r.results.map((p) => el('div', { 'data-package': p.name, onclick: () => addPackage(p.name) }, el('b', {}, p.name), el('span', { class: 'mono' }, p.version), el('span', { class: 'desc' }, p.description))));
      if (r.results.length === 0) results.append(el('div', { class: 'muted' }, 'no package matches'));
      results.hidden = false;
    } catch (err) {
      indexInfo.textContent = err.message;
      results.hidden = true;
    }
  }, 250);
  search.addEventListener('input', runSearch);
  search.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      addPackage(search.value.trim());
    }
  });

  function spec() {
    /** @type {Record<string, unknown>} */
    const s = { distribution: dist.value, release: releaseValue(), architecture: arch.value, groups: [...state.groups], packages: state.packages, outputs: [...state.outputs] };
    if (name.value.trim()) s.name = name.value.trim();
    if (password.value) s.rootPassword = password.value;
    const urls = mirrors.value.split('\n').map((l) => l.trim()).filter((l) => l !== '');
    if (urls.length > 0) s.mirrors = urls;
    if (kernel.value) s.kernel = kernel.value === 'other' ? kernelPackage.value.trim() : true;
    if (firmware.value) s.firmware = firmware.value;
    if (dhcp.checked) s.network = 'dhcp';
    if (!serial.checked) s.serialConsole = false;
    const sshKeys = keys.value.split('\n').map((l) => l.trim()).filter((l) => l !== '');
    if (sshKeys.length > 0) s.users = [{ name: user.value.trim(), sshKeys }];
    if (cloudInit.value !== 'none') s.cloudInit = cloudInit.value;
    if (parent.value) {
      s.parent = parent.value;
      // A child keeps its parent's system; only what it adds is sent.
      delete s.distribution; delete s.release; delete s.architecture; delete s.mirrors;
    }
    return s;
  }

  let checkSeq = 0;
  const check = debounce(async () => {
    const seq = ++checkSeq;
    try {
      const r = await api('POST', '/api/specs/check', { spec: spec() });
      if (seq !== checkSeq) return;
      const built = r.built.length
        ? el('span', { class: 'ok', id: 'built' }, `already built: ${r.built.map((i) => `${i.name ?? short(i.digest)} (${bytes(i.size)})`).join(', ')}`)
        : el('span', { class: 'muted', id: 'built' }, 'not built yet');
      digest.replaceChildren(el('div', {}, 'request checksum ', el('code', { id: 'spec-digest' }, r.specDigest)), built);
      markPackages([]);
      buildButton.disabled = false;
    } catch (err) {
      if (seq !== checkSeq) return;
      markPackages(err.issues);
      digest.replaceChildren(el('pre', { class: 'bad', id: 'spec-issues' }, err.issues ? err.issues.map((i) => `${i.path}: ${i.message}`).join('\n') : err.message));
      buildButton.disabled = true;
    }
  }, 200);

  buildButton.addEventListener('click', async () => {
    buildButton.disabled = true;
    try {
      const job = await api('POST', '/api/builds', { spec: spec() });
      notice(`build ${job.title} queued`, 'info');
      location.hash = `#/build/${job.id}`;
    } catch (err) {
      showError(err);
      buildButton.disabled = false;
    }
  });
  // With a parent, the system is the parent's and no bootstrap variant can be chosen.
  parent.addEventListener('change', () => {
    const p = repo.images.find((i) => (i.name ?? i.digest) === parent.value);
    if (p) {
      dist.value = p.distribution;
      fillDistribution();
      release.value = p.release;
      arch.value = p.architecture;
    }
    for (const input of [dist, release, releaseText, arch, mirrors]) input.disabled = Boolean(p);
    const variants = current().variants;
    for (const box of groups.querySelectorAll('input')) {
      if (!variants.includes(box.value)) continue;
      box.disabled = Boolean(p);
      if (p && box.checked) {
        box.checked = false;
        state.groups.delete(box.value);
      }
    }
    check();
  });
  for (const input of [release, releaseText, arch, name, password, mirrors, kernelPackage, user, keys]) input.addEventListener('input', check);
  for (const input of [firmware, dhcp, serial, cloudInit]) input.addEventListener('change', check);
  kernel.addEventListener('change', () => { kernelPackage.hidden = kernel.value !== 'other'; check(); });
  dist.addEventListener('change', () => { fillDistribution(); check(); });

  view.append(
    el('h1', {}, 'Compose an image'),
    el('div', { class: 'grid' },
      el('div', { class: 'card' },
        el('h2', {}, 'System'),
        el('label', { for: 'distribution' }, 'Distribution'), dist, needs,
        el('label', { for: 'release' }, 'Release'), release, releaseText,
        el('label', { for: 'architecture' }, 'Architecture'), arch,
        el('label', { for: 'mirrors' }, 'Mirrors'), mirrors,
        el('label', { for: 'parent' }, 'Parent (an image built before; this one adds to it)'), parent),
      el('div', { class: 'card' },
        el('h2', {}, 'Groups'), groups,
        el('h2', {}, 'Outputs'), outputs,
        el('label', { for: 'name' }, 'Image name'), name,
        el('label', { for: 'root-password' }, 'Root password'), password)),
    el('div', { class: 'card' }, el('h2', {}, 'Packages'), chips, el('label', { for: 'package-search' }, 'Search the package index'), search, results, indexInfo),
    el('div', { class: 'card', id: 'boot' },
      el('h2', {}, 'Booting (disk, qcow2) and first boot'),
      el('label', { for: 'kernel' }, 'Kernel'), kernel, kernelPackage,
      el('label', { for: 'firmware' }, 'Firmware'), firmware,
      el('label', {}, dhcp, ' DHCP on the network cards'),
      el('label', {}, serial, ' console on the serial port too'),
      el('label', { for: 'ssh-user' }, 'User with SSH keys'), user, keys,
      el('label', { for: 'cloud-init' }, 'cloud-init'), cloudInit),
    el('div', { class: 'card' }, el('h2', {}, 'Request'), digest, el('p', {}, buildButton)),
  );
  fillDistribution();
  renderChips();
  check();
}
