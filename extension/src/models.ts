/** The Models section: registered models; a click lists versions (aliases, metrics), a click on one its lineage. */
import { ILineage, ILineageNode, IModel, IModelVersion, requestAPI } from './api';
import { fill, h } from './dom';

export class ModelsSection {
  readonly node = h('section', 'mlplat-section mlplat-models');
  private readonly list = h('ul', 'mlplat-list');

  constructor() {
    this.node.append(h('h3', '', 'Models'), this.list);
  }

  refresh(): Promise<void> {
    return fill(this.list, async () => {
      const models = await requestAPI<IModel[]>('models');
      return models.length ? models.map(modelItem) : [h('li', 'mlplat-empty', 'No registered models yet.')];
    });
  }
}

function modelItem(model: IModel): HTMLElement {
  const versions = h('ul', 'mlplat-versions');
  const aliases = Object.entries(model.aliases).map(([alias, version]) => h('span', 'mlplat-alias', `${alias} v${version}`));
  const title = h('div', 'mlplat-item-title', h('b', '', model.name), ` latest v${model.latest}`, ...aliases);
  title.title = 'Show versions';
  title.addEventListener('click', () => void fill(versions, async () =>
    (await requestAPI<IModelVersion[]>(`models/${encodeURIComponent(model.name)}/versions`)).map(versionItem)));
  return h('li', 'mlplat-model', title, versions);
}

function versionItem(version: IModelVersion): HTMLElement {
  const lineage = h('div', 'mlplat-lineage');
  const metrics = Object.entries(version.metrics)
    .filter(([, value]) => value !== null)
    .map(([name, value]) => `${name} ${(value as number).toFixed(3)}`);
  const title = h('div', 'mlplat-item-title', `v${version.version}`,
    ...version.aliases.map(alias => h('span', 'mlplat-alias', alias)), version.archived ? ' (archived)' : '',
    h('div', 'mlplat-metrics', metrics.join(' · ')));
  title.title = 'Show lineage';
  const path = `models/${encodeURIComponent(version.name)}/versions/${encodeURIComponent(version.version)}/lineage`;
  title.addEventListener('click', () => void fill(lineage, async () => [tree((await requestAPI<ILineage>(path)).root)]));
  return h('li', 'mlplat-version', title, lineage);
}

function tree(node: ILineageNode): HTMLElement {
  const details = Object.entries(node.details)
    .filter(([, value]) => value !== null && value !== '')
    .map(([name, value]) => `${name}: ${value}`);
  return h('ul', 'mlplat-tree', h('li', '', h('span', 'mlplat-kind', node.kind), ` ${node.label}`,
    h('div', 'mlplat-metrics', details.join(', ')), ...node.children.map(tree)));
}
