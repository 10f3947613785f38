/** The Features section: a search box and the matching feature views with their schema; a click shows freshness. */
import { IFeatureView, IFreshness, requestAPI } from './api';
import { Child, fill, h, when } from './dom';

export class FeaturesSection {
  readonly node = h('section', 'mlplat-section mlplat-features');
  private readonly search = document.createElement('input');
  private readonly list = h('ul', 'mlplat-list');
  private typing = 0;

  constructor() {
    this.search.type = 'search';
    this.search.placeholder = 'Search views, features, tags';
    this.search.className = 'jp-mod-styled mlplat-search';
    this.search.addEventListener('input', () => {
      window.clearTimeout(this.typing);
      this.typing = window.setTimeout(() => void this.refresh(), 250);
    });
    this.node.append(h('h3', '', 'Features'), this.search, this.list);
  }

  refresh(): Promise<void> {
    const query = encodeURIComponent(this.search.value);
    return fill(this.list, async () => {
      const views = await requestAPI<IFeatureView[]>(`features?q=${query}`);
      return views.length ? views.map(viewItem) : [h('li', 'mlplat-empty', 'No feature views match.')];
    });
  }
}

function viewItem(view: IFeatureView): HTMLElement {
  const freshness = h('div', 'mlplat-detail');
  const title = h('div', 'mlplat-item-title', h('b', '', view.name), ` v${view.version}`,
    view.owner ? ` · ${view.owner}` : '');
  title.title = 'Show freshness';
  title.addEventListener('click', () => void fill(freshness, () => freshnessOf(view.name)));
  const schema = view.schema.map(field => h('li', '', h('code', '', field.name), ` ${field.dtype}`));
  return h('li', 'mlplat-view', title, h('div', 'mlplat-description', view.description),
    h('ul', 'mlplat-schema', ...schema), freshness);
}

async function freshnessOf(view: string): Promise<Child[]> {
  const found = await requestAPI<IFreshness>(`features/${encodeURIComponent(view)}/freshness`);
  return [`latest event ${when(found.latest_event)}; materialised until ${when(found.materialized_until)}; `
    + `${found.unmaterialized_files} file(s) not materialised yet`];
}
